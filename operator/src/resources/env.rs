//! Container environment entries, shared by every builder that writes a container: a plain
//! value, a field of the pod itself (the downward API: its name, its IP) and a Secret key
//! (by reference, so the value never lands in a spec). Pure.

use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, SecretKeySelector};

/// `name` = `value`.
pub fn plain_env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

/// `name` from the pod's own `field_path` (downward API), e.g. `metadata.name` for the pod
/// name or `status.podIP` for its IP.
pub fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `name` from `key` of the Secret `secret`, which must exist and have the key.
pub fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_entry() {
        let v = plain_env("A", "1");
        assert_eq!((v.name.as_str(), v.value.as_deref()), ("A", Some("1")));
        assert!(v.value_from.is_none());

        let f = field_env("POD_NAME", "metadata.name");
        assert!(f.value.is_none());
        let src = f.value_from.unwrap();
        assert_eq!(src.field_ref.unwrap().field_path, "metadata.name");
        assert!(src.secret_key_ref.is_none());

        let s = secret_env("B", "creds", "password");
        let sel = s.value_from.unwrap().secret_key_ref.unwrap();
        assert_eq!(
            (sel.name.as_str(), sel.key.as_str(), sel.optional),
            ("creds", "password", Some(false))
        );
    }
}
