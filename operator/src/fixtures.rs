//! Test support: a mocked Kubernetes API server behind a real `kube::Client`, so the reconciler
//! runs unchanged in unit tests (the pattern of kube-rs's controller-rs `fixtures.rs`: a
//! `tower_test` mock service as the client's transport, and a task on the other end that
//! checks and answers every request).
//!
//! [`ApiServerVerifier`] keeps the objects it was given or that were applied, answers GET,
//! list (with label selectors), server-side apply, merge patch, event creation and DELETE
//! much like an API server would, and records every request as a [`Call`] for the test to
//! assert on (order, method, path, query, body fields). A test can seed live objects, merge
//! a status into whatever it returns for a path (a completed Job, ready StatefulSet pods) and
//! make it refuse a request with an error code. A request of any other shape is a surprise:
//! it is answered with a 500 and fails the test at the next [`ApiServerVerifier::calls`].

use crate::controller::{Context, Options};
use crate::metrics::Metrics;
use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::{ByteString, NamespaceResourceScope};
use kube::client::Body;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tower_test::mock;

/// Content type of a server-side apply patch.
pub const APPLY: &str = "application/apply-patch+yaml";
/// Content type of a JSON merge patch.
pub const MERGE: &str = "application/merge-patch+json";

/// One request the operator made.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: Method,
    pub path: String,
    /// Query parameters, decoded.
    pub query: BTreeMap<String, String>,
    pub content_type: Option<String>,
    /// The body as JSON (`Null` when there is none).
    pub body: Value,
}

impl Call {
    /// A server-side apply of `kind` (any name).
    pub fn is_apply_of(&self, kind: &str) -> bool {
        self.method == Method::PATCH
            && self.content_type.as_deref() == Some(APPLY)
            && self.body["kind"] == kind
    }

    /// A JSON merge patch.
    pub fn is_merge(&self) -> bool {
        self.method == Method::PATCH && self.content_type.as_deref() == Some(MERGE)
    }

    /// The last segment of the path: the object's name (or `status` for the subresource).
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or_default()
    }

    /// Whether the path is under `plural` (`deployments`, `jobs`, …) in any API group.
    pub fn is_on(&self, plural: &str) -> bool {
        self.path.contains(&format!("/{plural}/")) || self.path.ends_with(&format!("/{plural}"))
    }
}

#[derive(Default)]
struct State {
    /// Live objects by their path.
    objects: BTreeMap<String, Value>,
    /// (path fragment, JSON merged into every object returned for a path containing it).
    overlays: Vec<(String, Value)>,
    /// (method, exact path, HTTP code, message): answered with that error.
    refusals: Vec<(Method, String, u16, String)>,
    calls: Vec<Call>,
    surprises: Vec<String>,
}

/// The mocked API server; cheap to clone (all clones share one state).
#[derive(Clone, Default)]
pub struct ApiServerVerifier {
    state: Arc<Mutex<State>>,
}

impl ApiServerVerifier {
    /// A server that holds `cluster` (the status patch answers with it).
    pub fn new<K>(cluster: &K) -> Self
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Serialize,
    {
        let s = ApiServerVerifier::default();
        s.put(cluster);
        s
    }

    /// A client whose requests this server answers, and the operator context around it. The
    /// serving task ends when every clone of the client is dropped.
    pub fn context(&self, opts: Options) -> Arc<Context> {
        let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let server = self.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let call = read(request).await;
                let (code, body) = server.answer(&call);
                server.lock().calls.push(call);
                let response = Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&body).expect("json")))
                    .expect("response");
                send.send_response(response);
            }
        });
        let client = Client::new(service, "default");
        Arc::new(Context::new(client, opts, Arc::new(Metrics::default())))
    }

    /// Store `obj` as a live object.
    pub fn put<K>(&self, obj: &K)
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Serialize,
    {
        let mut v = serde_json::to_value(obj).expect("object serializes");
        v["apiVersion"] = json!(K::api_version(&()));
        v["kind"] = json!(K::kind(&()));
        self.lock().objects.insert(object_path(obj), v);
    }

    /// The live object at `path`, if any.
    pub fn get(&self, path: &str) -> Option<Value> {
        self.lock().objects.get(path).cloned()
    }

    /// Merge `value` into every object returned for a path containing `fragment` (what the
    /// workload controllers would have written, e.g. `{"status": {"readyReplicas": 1}}`).
    pub fn overlay(&self, fragment: &str, value: Value) {
        self.lock().overlays.push((fragment.to_string(), value));
    }

    /// Answer `method` on exactly `path` with an error `code` and `message`.
    pub fn refuse(&self, method: Method, path: &str, code: u16, message: &str) {
        self.lock()
            .refusals
            .push((method, path.to_string(), code, message.to_string()));
    }

    /// Answer normally again.
    pub fn clear_refusals(&self) {
        self.lock().refusals.clear();
    }

    /// Every request so far, in order. Fails the test if one was of a kind the server does
    /// not know.
    pub fn calls(&self) -> Vec<Call> {
        let st = self.lock();
        assert!(
            st.surprises.is_empty(),
            "unexpected requests: {:?}",
            st.surprises
        );
        st.calls.clone()
    }

    /// The body of the last status patch.
    pub fn last_status(&self) -> Value {
        self.calls()
            .iter()
            .rev()
            .find(|c| c.method == Method::PATCH && c.path.ends_with("/status"))
            .map(|c| c.body["status"].clone())
            .expect("a status patch")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("mock API server state")
    }

    fn answer(&self, call: &Call) -> (StatusCode, Value) {
        let mut st = self.lock();
        if let Some((_, _, code, msg)) = st
            .refusals
            .iter()
            .find(|(m, p, ..)| *m == call.method && *p == call.path)
        {
            return (code_of(*code), status_body(*code, msg));
        }
        let path = call.path.as_str();
        let with_overlays = |st: &State, mut v: Value| {
            for (fragment, o) in &st.overlays {
                if path.contains(fragment.as_str()) {
                    merge(&mut v, o);
                }
            }
            v
        };
        match (&call.method, call.content_type.as_deref()) {
            (&Method::GET, _) if is_collection(path) => {
                let wanted = label_selector(call.query.get("labelSelector"));
                let items: Vec<Value> = st
                    .objects
                    .iter()
                    .filter(|(p, _)| {
                        p.strip_prefix(path)
                            .and_then(|rest| rest.strip_prefix('/'))
                            .is_some_and(|name| !name.contains('/'))
                    })
                    .filter(|(_, v)| {
                        wanted
                            .iter()
                            .all(|(k, val)| v["metadata"]["labels"][k] == val.as_str())
                    })
                    .map(|(_, v)| with_overlays(&st, v.clone()))
                    .collect();
                let list = json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items});
                (StatusCode::OK, list)
            }
            (&Method::GET, _) => match st.objects.get(path) {
                Some(v) => (StatusCode::OK, with_overlays(&st, v.clone())),
                None => (StatusCode::NOT_FOUND, status_body(404, "not found")),
            },
            (&Method::PATCH, Some(APPLY)) if path.ends_with("/status") => {
                let main = path.trim_end_matches("/status");
                match st.objects.get_mut(main) {
                    Some(obj) => {
                        obj["status"] = call.body["status"].clone();
                        (StatusCode::OK, obj.clone())
                    }
                    None => (StatusCode::NOT_FOUND, status_body(404, "not found")),
                }
            }
            (&Method::PATCH, Some(APPLY)) => {
                let mut obj = applied(&call.body);
                // The workload controllers own status: an apply keeps it.
                if let Some(live) = st.objects.get(path)
                    && !live["status"].is_null()
                {
                    obj["status"] = live["status"].clone();
                }
                st.objects.insert(path.to_string(), obj.clone());
                (StatusCode::OK, with_overlays(&st, obj))
            }
            (&Method::PATCH, Some(MERGE)) => match st.objects.get_mut(path) {
                Some(obj) => {
                    merge(obj, &call.body);
                    let v = obj.clone();
                    (StatusCode::OK, with_overlays(&st, v))
                }
                None => (StatusCode::NOT_FOUND, status_body(404, "not found")),
            },
            (&Method::POST, _) if path.ends_with("/events") => {
                let mut ev = call.body.clone();
                let name = ev["metadata"]["name"]
                    .as_str()
                    .unwrap_or("event")
                    .to_string();
                ev["metadata"]["name"] = json!(name);
                st.objects.insert(format!("{path}/{name}"), ev.clone());
                (StatusCode::CREATED, ev)
            }
            (&Method::DELETE, _) => match st.objects.remove(path) {
                Some(_) => (
                    StatusCode::OK,
                    json!({"apiVersion": "v1", "kind": "Status", "status": "Success", "metadata": {}}),
                ),
                None => (StatusCode::NOT_FOUND, status_body(404, "not found")),
            },
            _ => {
                let what = format!("{} {} ({:?})", call.method, path, call.content_type);
                st.surprises.push(what.clone());
                (StatusCode::INTERNAL_SERVER_ERROR, status_body(500, &what))
            }
        }
    }
}

/// The path of a namespaced object: `/api[s]/…/namespaces/<ns>/<plural>/<name>`.
pub fn object_path<K>(obj: &K) -> String
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
{
    let ns = obj.namespace().unwrap_or_else(|| "default".into());
    format!("{}/{}", K::url_path(&(), Some(&ns)), obj.name_any())
}

/// The path of the namespaced object `name` of kind `K` in `ns`.
pub fn path_of<K>(ns: &str, name: &str) -> String
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
{
    format!("{}/{name}", K::url_path(&(), Some(ns)))
}

async fn read(request: Request<Body>) -> Call {
    let (parts, body) = request.into_parts();
    let bytes = body.collect_bytes().await.expect("request body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("request body is JSON")
    };
    Call {
        method: parts.method,
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(decode_query).unwrap_or_default(),
        content_type: parts
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body,
    }
}

/// What the API server stores for an applied object: a Secret's `stringData` moves to `data`.
fn applied(body: &Value) -> Value {
    if body["kind"] != "Secret" || body["stringData"].is_null() {
        return body.clone();
    }
    let mut s: Secret = serde_json::from_value(body.clone()).expect("a Secret");
    let mut data = s.data.take().unwrap_or_default();
    for (k, v) in s.string_data.take().unwrap_or_default() {
        data.insert(k, ByteString(v.into_bytes()));
    }
    s.data = Some(data);
    let mut v = serde_json::to_value(&s).expect("a Secret serializes");
    v["apiVersion"] = json!("v1");
    v["kind"] = json!("Secret");
    v
}

/// `/api/v1/namespaces/<ns>/<plural>` or `/apis/<group>/<version>/namespaces/<ns>/<plural>`.
fn is_collection(path: &str) -> bool {
    let n = path.split('/').count();
    (path.starts_with("/api/") && n == 6) || (path.starts_with("/apis/") && n == 7)
}

/// RFC 7396 merge of `patch` into `target`.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn code_of(code: u16) -> StatusCode {
    StatusCode::from_u16(code).expect("an HTTP status code")
}

fn status_body(code: u16, message: &str) -> Value {
    let reason = match code {
        404 => "NotFound",
        400 => "BadRequest",
        422 => "Invalid",
        _ => "InternalError",
    };
    json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// `k=v,k2=v2` into pairs (`None`: match everything).
fn label_selector(sel: Option<&String>) -> Vec<(String, String)> {
    sel.map(|s| {
        s.split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    })
    .unwrap_or_default()
}

fn decode_query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(byte) => {
                        out.push(byte);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_paths() {
        let q = decode_query("&labelSelector=app.kubernetes.io%2Fname%3Dtern%2Ca%3Db&force=true");
        assert_eq!(q["labelSelector"], "app.kubernetes.io/name=tern,a=b");
        assert_eq!(q["force"], "true");
        assert!(is_collection("/api/v1/namespaces/ns/pods"));
        assert!(is_collection("/apis/batch/v1/namespaces/ns/jobs"));
        assert!(!is_collection("/apis/batch/v1/namespaces/ns/jobs/j"));
        assert!(!is_collection("/api/v1/namespaces/ns/pods/p"));
        let mut v = json!({"a": {"b": 1, "c": 2}});
        merge(&mut v, &json!({"a": {"b": null, "d": 3}}));
        assert_eq!(v, json!({"a": {"c": 2, "d": 3}}));
    }
}
