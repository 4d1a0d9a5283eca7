//! Writing owned objects: server-side apply under the operator's field manager, a refusal by
//! the API server recorded against the spec field it comes from (reported in `Degraded`, the
//! rest of the cluster still reconciled), and removal of components no longer wanted.

use super::Reconciler;
use crate::error::{Error, Result};
use crate::status::Rejection;
use kube::api::{DeleteParams, Patch};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use tracing::{info, warn};

impl Reconciler<'_> {
    pub(super) async fn apply<K>(&self, obj: &K) -> Result<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Serialize
            + DeserializeOwned
            + Clone
            + Debug,
        K::DynamicType: Default,
    {
        let name = obj.meta().name.clone().unwrap_or_default();
        Ok(self
            .api::<K>()
            .patch(&name, &self.pp, &Patch::Apply(obj))
            .await?)
    }

    /// Apply `obj`; when the API server refuses it (400 or 422: an invalid value, or a change
    /// to an immutable field), record the refusal against `field` (the spec field the object
    /// comes from) and carry on with the live object, if there is one. Other errors stop the
    /// reconcile as usual (they are retried with backoff).
    pub(super) async fn apply_or_record<K>(&self, obj: &K, field: &str) -> Result<Option<K>>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Serialize
            + DeserializeOwned
            + Clone
            + Debug,
        K::DynamicType: Default,
    {
        match self.apply(obj).await {
            Ok(o) => Ok(Some(o)),
            Err(Error::Kube(kube::Error::Api(s))) if s.code == 400 || s.code == 422 => {
                let kind = K::kind(&Default::default()).to_string();
                let name = obj.meta().name.clone().unwrap_or_default();
                warn!(kind = %kind, object = %name, field, cause = %s.message, "the API server refused an object; reconciling the rest");
                self.record(Rejection::new(&kind, &name, field, &s.message));
                Ok(self.api::<K>().get_opt(&name).await?)
            }
            Err(e) => Err(e),
        }
    }

    fn record(&self, r: Rejection) {
        self.rejections.lock().expect("rejections lock").push(r);
    }

    pub(super) fn rejections(&self) -> Vec<Rejection> {
        self.rejections.lock().expect("rejections lock").clone()
    }

    /// Delete `name` if it exists and this cluster controls it (a component that is no longer
    /// wanted: a PDB after scaling to one pod, a managed dependency switched to external).
    pub(super) async fn delete_owned<K>(&self, name: &str) -> Result<()>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + DeserializeOwned + Clone + Debug,
        K::DynamicType: Default,
    {
        let api = self.api::<K>();
        if let Some(obj) = api.get_opt(name).await?
            && obj
                .owner_references()
                .iter()
                .any(|o| Some(&o.uid) == self.cluster.uid().as_ref())
        {
            info!(object = name, kind = %K::kind(&Default::default()), "deleting component no longer wanted");
            match api.delete(name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}
