//! The sync protocol's core promise, on arbitrary estates: a gateway holding its view of one
//! configuration and applying the delta `diff(view(a), view(b))` holds exactly `view(b)`, with
//! the hash the control plane computed — whatever was added, changed or deleted, directly or
//! through what a view pulls in (backends, products, subscriptions, named values).

use outpost_model::policy::PolicyDocument;
use outpost_model::resources::*;
use outpost_model::view::{View, content_hash, diff, gateway_view};
use outpost_model::wire::{ApplyError, ConfigUpdate, GatewaySnapshot};
use proptest::prelude::*;

/// One configuration, as small indices into fixed name sets so that two estates overlap.
#[derive(Debug, Clone)]
struct Estate {
    named_values: Vec<Option<(u8, bool)>>,
    backends: Vec<Option<(Option<usize>, u8)>>,
    apis: Vec<Option<(usize, bool)>>,
    products: Vec<Option<Vec<usize>>>,
    subscriptions: Vec<Option<(u8, usize, bool)>>,
    gateways: Vec<Option<Vec<usize>>>,
}

const N: usize = 4;

fn estate() -> impl Strategy<Value = Estate> {
    let idx = || 0..N;
    let subset = move || prop::collection::vec(0..N, 0..N);
    (
        prop::collection::vec(prop::option::of((0u8..3, any::<bool>())), N),
        prop::collection::vec(prop::option::of((prop::option::of(idx()), 0u8..3)), N),
        prop::collection::vec(prop::option::of((idx(), any::<bool>())), N),
        prop::collection::vec(prop::option::of(subset()), N),
        prop::collection::vec(prop::option::of((0u8..3, idx(), any::<bool>())), N),
        prop::collection::vec(prop::option::of(subset()), 2),
    )
        .prop_map(
            |(named_values, backends, apis, products, subscriptions, gateways)| Estate {
                named_values,
                backends,
                apis,
                products,
                subscriptions,
                gateways,
            },
        )
}

impl Estate {
    fn resources(&self) -> Vec<Resource> {
        let mut out = Vec::new();
        for (i, nv) in self.named_values.iter().enumerate() {
            if let Some((value, secret)) = nv {
                out.push(Resource::NamedValue(NamedValue {
                    name: format!("nv{i}"),
                    value: format!("value-{value}"),
                    secret: *secret,
                }));
            }
        }
        for (i, b) in self.backends.iter().enumerate() {
            if let Some((named, port)) = b {
                let host = named.map_or_else(|| format!("h{port}"), |n| format!("{{{{nv{n}}}}}"));
                out.push(Resource::Backend(Backend {
                    name: format!("b{i}"),
                    url: format!("http://{host}:80{port}/x"),
                    connect_timeout_ms: 1000,
                    request_timeout_ms: 1000 + u64::from(*port),
                    tls: BackendTls::default(),
                    protocol: Default::default(),
                    members: Vec::new(),
                    load_balancing: None,
                    passive_health: None,
                    health_check: None,
                    circuit_breaker: None,
                }));
            }
        }
        for (i, a) in self.apis.iter().enumerate() {
            if let Some((backend, required)) = a {
                out.push(Resource::Api(Api {
                    name: format!("a{i}"),
                    display_name: String::new(),
                    path: format!("a{i}"),
                    hostnames: vec![],
                    backend: format!("b{backend}"),
                    subscription_required: *required,
                    version: None,
                    operations: vec![],
                    policies: PolicyDocument::default(),
                    access_log: true,
                }));
            }
        }
        for (i, p) in self.products.iter().enumerate() {
            if let Some(apis) = p {
                out.push(Resource::Product(Product {
                    name: format!("p{i}"),
                    display_name: String::new(),
                    apis: apis.iter().map(|a| format!("a{a}")).collect(),
                    subscription_required: true,
                    policies: PolicyDocument::default(),
                }));
            }
        }
        for (i, s) in self.subscriptions.iter().enumerate() {
            if let Some((kind, target, active)) = s {
                let scope = match kind {
                    0 => Scope::AllApis,
                    1 => Scope::Product(format!("p{target}")),
                    _ => Scope::Api(format!("a{target}")),
                };
                out.push(Resource::Subscription(Subscription {
                    name: format!("s{i}"),
                    display_name: String::new(),
                    scope,
                    state: if *active {
                        SubscriptionState::Active
                    } else {
                        SubscriptionState::Suspended
                    },
                    primary_key: format!("key-{i}-{kind}-{target}"),
                    secondary_key: String::new(),
                    expires_at: None,
                }));
            }
        }
        for (i, g) in self.gateways.iter().enumerate() {
            if let Some(apis) = g {
                out.push(Resource::Gateway(Gateway {
                    name: format!("g{i}"),
                    location: String::new(),
                    description: String::new(),
                    apis: apis.iter().map(|a| format!("a{a}")).collect(),
                    hostnames: vec![],
                }));
            }
        }
        out
    }
}

fn delta(from: &View, to: &View) -> ConfigUpdate {
    let (upserts, deletes) = diff(from, to);
    ConfigUpdate {
        full: false,
        from_revision: 1,
        revision: 2,
        hash: content_hash(to),
        upserts,
        deletes,
        signature: Default::default(),
        endorsements: Vec::new(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn applying_the_delta_of_two_views_gives_the_second(a in estate(), b in estate()) {
        let (a, b) = (a.resources(), b.resources());
        for gateway in [Some("g0"), Some("g1"), None] {
            let before = gateway_view(&a, gateway);
            let after = gateway_view(&b, gateway);
            let held = GatewaySnapshot::from_view(1, before.clone());
            let update = delta(&before, &after);
            // A delta only carries what the gateway may see.
            for r in &update.upserts {
                prop_assert_eq!(after.get(&r.key()), Some(r));
            }
            let applied = held.apply(&update).expect("the delta applies");
            prop_assert_eq!(&applied.resources, &after);
            prop_assert_eq!(applied.revision, 2);
            prop_assert_eq!(applied.hash, content_hash(&after));
        }
    }

    #[test]
    fn an_unchanged_configuration_has_an_empty_delta(a in estate()) {
        let a = a.resources();
        let view = gateway_view(&a, Some("g0"));
        let (upserts, deletes) = diff(&view, &view);
        prop_assert!(upserts.is_empty() && deletes.is_empty());
    }

    #[test]
    fn a_delta_applied_to_another_view_is_refused(a in estate(), b in estate(), c in estate()) {
        let (a, b, c) = (a.resources(), b.resources(), c.resources());
        let (va, vb, vc) = (
            gateway_view(&a, Some("g0")),
            gateway_view(&b, Some("g0")),
            gateway_view(&c, Some("g0")),
        );
        // The delta a → b applied to c: either c happens to end where b is, or the hash check
        // refuses it; a gateway never holds a view the control plane did not intend.
        let held = GatewaySnapshot::from_view(1, vc);
        match held.apply(&delta(&va, &vb)) {
            Ok(applied) => prop_assert_eq!(applied.resources, vb),
            Err(e) => prop_assert!(matches!(e, ApplyError::HashMismatch { .. }), "{e:?}"),
        }
    }
}
