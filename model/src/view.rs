//! What one gateway may see, and how two views differ.
//!
//! A gateway receives its own resource, the APIs assigned to it, and only what those need: the
//! backends they (and their policies) use, the products that contain them (listing only the
//! assigned APIs), the subscriptions that grant access to them, the global policy, and the named
//! values any of these reference. Deltas are computed between two such views, so an assignment
//! change, a product change or a named value change all reach the gateway the same way.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};

use crate::policy::{Policy, PolicyDocument};
use crate::resources::{Kind, Resource, ResourceKey, Scope};
use crate::template::named_value_refs;

/// Resources by key, sorted so encodings and hashes are deterministic.
pub type View = BTreeMap<ResourceKey, Resource>;

/// The view of gateway `gateway` over a whole configuration. `None` gateway means "everything"
/// (offline mode without a gateway resource).
pub fn gateway_view<'a, I>(all: I, gateway: Option<&str>) -> View
where
    I: IntoIterator<Item = &'a Resource> + Clone,
{
    let lookup: BTreeMap<ResourceKey, &Resource> =
        all.clone().into_iter().map(|r| (r.key(), r)).collect();
    let Some(gateway) = gateway else {
        return lookup.into_iter().map(|(k, r)| (k, r.clone())).collect();
    };
    let mut view = View::new();
    let Some(Resource::Gateway(gw)) = lookup.get(&ResourceKey::new(Kind::Gateway, gateway)) else {
        return view;
    };
    view.insert(
        ResourceKey::new(Kind::Gateway, gateway),
        Resource::Gateway(gw.clone()),
    );

    let assigned: BTreeSet<&str> = gw.apis.iter().map(String::as_str).collect();
    let mut backends: BTreeSet<String> = BTreeSet::new();
    let mut strings: Vec<String> = Vec::new();
    for h in &gw.hostnames {
        strings.extend(h.certificate_pem.iter().cloned());
        strings.extend(h.key_pem.iter().cloned());
        strings.extend(h.client_ca_pem.iter().cloned());
    }
    let take_doc =
        |doc: &PolicyDocument, backends: &mut BTreeSet<String>, strings: &mut Vec<String>| {
            for (_, p) in doc.iter() {
                strings.extend(p.template_strings().into_iter().map(str::to_owned));
                if let Policy::SetBackendService(s) = p {
                    backends.extend(s.backend_id.iter().cloned());
                }
            }
        };

    for (key, r) in &lookup {
        match r {
            Resource::Api(api) if assigned.contains(api.name.as_str()) => {
                backends.insert(api.backend.clone());
                take_doc(&api.policies, &mut backends, &mut strings);
                for op in &api.operations {
                    take_doc(&op.policies, &mut backends, &mut strings);
                }
                view.insert(key.clone(), (*r).clone());
            }
            Resource::GlobalPolicy(g) => {
                take_doc(&g.policies, &mut backends, &mut strings);
                view.insert(key.clone(), (*r).clone());
            }
            _ => {}
        }
    }
    let mut products: BTreeSet<&str> = BTreeSet::new();
    for (key, r) in &lookup {
        if let Resource::Product(p) = r {
            let apis: Vec<String> = p
                .apis
                .iter()
                .filter(|a| assigned.contains(a.as_str()))
                .cloned()
                .collect();
            if !apis.is_empty() {
                products.insert(p.name.as_str());
                take_doc(&p.policies, &mut backends, &mut strings);
                let mut p = p.clone();
                p.apis = apis;
                view.insert(key.clone(), Resource::Product(p));
            }
        }
    }
    for (key, r) in &lookup {
        if let Resource::Subscription(s) = r {
            let visible = match &s.scope {
                Scope::AllApis => true,
                Scope::Product(p) => products.contains(p.as_str()),
                Scope::Api(a) => assigned.contains(a.as_str()),
            };
            if visible {
                view.insert(key.clone(), (*r).clone());
            }
        }
    }
    for b in &backends {
        let key = ResourceKey::new(Kind::Backend, b.clone());
        if let Some(r @ Resource::Backend(backend)) = lookup.get(&key) {
            strings.push(backend.url.clone());
            strings.extend(backend.members.iter().map(|m| m.url.clone()));
            strings.extend(backend.tls.ca_pem.iter().cloned());
            view.insert(key, (*r).clone());
        }
    }
    for s in &strings {
        for n in named_value_refs(s) {
            let key = ResourceKey::new(Kind::NamedValue, n);
            if let Some(r) = lookup.get(&key) {
                view.insert(key, (*r).clone());
            }
        }
    }
    view
}

/// SHA-256 (hex) of the view's canonical bincode encoding. The control plane sends it with every
/// update and the gateway recomputes it after applying, so a lost or misapplied delta is caught.
pub fn content_hash(view: &View) -> String {
    let mut hasher = Sha256::new();
    for r in view.values() {
        let bytes = bincode::serde::encode_to_vec(r, bincode::config::standard())
            .expect("model types encode infallibly");
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    hex::encode(hasher.finalize())
}

/// Upserts and deletes that turn `old` into `new`.
pub fn diff(old: &View, new: &View) -> (Vec<Resource>, Vec<ResourceKey>) {
    let upserts = new
        .iter()
        .filter(|(k, r)| old.get(*k) != Some(*r))
        .map(|(_, r)| r.clone())
        .collect();
    let deletes = old
        .keys()
        .filter(|k| !new.contains_key(*k))
        .cloned()
        .collect();
    (upserts, deletes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::*;

    fn api(name: &str, backend: &str) -> Resource {
        Resource::Api(Api {
            name: name.into(),
            display_name: String::new(),
            path: name.into(),
            hostnames: vec![],
            backend: backend.into(),
            subscription_required: true,
            version: None,
            operations: vec![],
            policies: PolicyDocument::default(),
            access_log: true,
        })
    }

    fn backend(name: &str, url: &str) -> Resource {
        Resource::Backend(Backend {
            name: name.into(),
            url: url.into(),
            connect_timeout_ms: 1000,
            request_timeout_ms: 1000,
            tls: BackendTls::default(),
            protocol: Default::default(),
            members: Vec::new(),
            load_balancing: None,
            passive_health: None,
            health_check: None,
            circuit_breaker: None,
        })
    }

    fn gateway(name: &str, apis: &[&str]) -> Resource {
        Resource::Gateway(Gateway {
            name: name.into(),
            location: String::new(),
            description: String::new(),
            apis: apis.iter().map(|s| s.to_string()).collect(),
            hostnames: vec![],
        })
    }

    fn sub(name: &str, scope: Scope) -> Resource {
        Resource::Subscription(Subscription {
            name: name.into(),
            display_name: String::new(),
            scope,
            state: SubscriptionState::Active,
            primary_key: String::new(),
            secondary_key: String::new(),
            expires_at: None,
        })
    }

    #[test]
    fn gateway_sees_only_what_its_apis_need() {
        let all = vec![
            Resource::NamedValue(NamedValue {
                name: "host-a".into(),
                value: "a.internal".into(),
                secret: true,
            }),
            Resource::NamedValue(NamedValue {
                name: "host-b".into(),
                value: "b.internal".into(),
                secret: true,
            }),
            backend("ba", "http://{{host-a}}"),
            backend("bb", "http://{{host-b}}"),
            api("a", "ba"),
            api("b", "bb"),
            Resource::Product(Product {
                name: "both".into(),
                display_name: String::new(),
                apis: vec!["a".into(), "b".into()],
                subscription_required: true,
                policies: PolicyDocument::default(),
            }),
            sub("s-all", Scope::AllApis),
            sub("s-a", Scope::Api("a".into())),
            sub("s-b", Scope::Api("b".into())),
            sub("s-both", Scope::Product("both".into())),
            gateway("gw-a", &["a"]),
            gateway("gw-b", &["b"]),
        ];
        let view = gateway_view(&all, Some("gw-a"));
        let names: Vec<String> = view.keys().map(|k| k.to_string()).collect();
        assert_eq!(
            names,
            vec![
                "named-values/host-a",
                "backends/ba",
                "apis/a",
                "products/both",
                "subscriptions/s-a",
                "subscriptions/s-all",
                "subscriptions/s-both",
                "gateways/gw-a",
            ]
        );
        let Resource::Product(p) = &view[&ResourceKey::new(Kind::Product, "both")] else {
            panic!()
        };
        assert_eq!(
            p.apis,
            vec!["a".to_string()],
            "other gateways' APIs are not listed"
        );
    }

    #[test]
    fn diff_and_hash() {
        let a: View = [api("a", "x"), api("b", "x")]
            .into_iter()
            .map(|r| (r.key(), r))
            .collect();
        let mut b = a.clone();
        b.remove(&ResourceKey::new(Kind::Api, "b"));
        b.insert(ResourceKey::new(Kind::Api, "c"), api("c", "x"));
        let (up, del) = diff(&a, &b);
        assert_eq!(up.len(), 1);
        assert_eq!(del, vec![ResourceKey::new(Kind::Api, "b")]);
        assert_ne!(content_hash(&a), content_hash(&b));
        let mut c = a.clone();
        for k in del {
            c.remove(&k);
        }
        for r in up {
            c.insert(r.key(), r);
        }
        assert_eq!(content_hash(&c), content_hash(&b));
    }
}
