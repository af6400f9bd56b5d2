//! What the DRA driver publishes: the placements vgpud can create on this
//! node, as `resource.k8s.io/v1` ResourceSlices (Kubernetes 1.36: devices
//! that consume shared counters).
//!
//! One pool per node (named after it) in two slices, since a slice holds
//! either shared counters or devices: one counter set per parent
//! (`framebuffer`, `vgpus`, and `type-<type>` for each type's own limit),
//! and one device per placement, `<parent>-<type>-<n>` for n below the
//! type's `max_instances`, consuming its framebuffer, one vGPU slot and one
//! of its type. The scheduler then never allocates more than the parent
//! holds, whatever mix of types the claims ask for.

use std::collections::BTreeMap;

use k8s_openapi::api::resource::v1::{
    Counter, CounterSet, Device, DeviceAttribute, DeviceCapacity, DeviceCounterConsumption,
    ResourcePool, ResourceSlice, ResourceSliceSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use vgpud::daemon::{ParentStatus, TypeInfo};

use crate::names::{dns_label, DOMAIN};

/// The most devices a slice may hold when they consume counters.
pub const MAX_DEVICES: usize = 64;

/// A vGPU vgpud can create: a device of the pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The device's name in the pool.
    pub name: String,
    pub parent: String,
    pub type_id: String,
    pub index: u32,
    pub framebuffer_bytes: u64,
}

/// The counter set of a parent.
fn counter_set(parent: &str) -> Option<String> {
    dns_label(parent)
}

/// The counter of a type's own instance limit.
fn type_counter(type_id: &str) -> Option<String> {
    dns_label(&format!("type-{type_id}"))
}

/// Every placement of every type of every parent, in vgpud's order; the
/// types whose names cannot make device names are left out (logged).
pub fn placements(types: &[TypeInfo]) -> Vec<Placement> {
    let mut out = Vec::new();
    for t in types {
        for i in 0..t.max_instances {
            match dns_label(&format!("{}-{}-{i}", t.parent, t.id)) {
                Some(name) if out.iter().all(|p: &Placement| p.name != name) => {
                    out.push(Placement {
                        name,
                        parent: t.parent.clone(),
                        type_id: t.id.clone(),
                        index: i,
                        framebuffer_bytes: t.framebuffer_bytes,
                    })
                }
                _ => {
                    tracing::warn!(parent = %t.parent, vtype = %t.id, "no device name for this placement: left out");
                    break;
                }
            }
        }
    }
    out
}

fn counter(n: u64) -> Counter {
    Counter {
        value: Quantity(n.to_string()),
    }
}

/// The two ResourceSlices of `node`'s pool.
pub fn resource_slices(
    node: &str,
    parents: &[ParentStatus],
    types: &[TypeInfo],
) -> Vec<ResourceSlice> {
    let pool = ResourcePool {
        name: node.to_string(),
        generation: 1,
        resource_slice_count: 2,
    };
    let mut sets = Vec::new();
    for p in parents {
        let Some(name) = counter_set(&p.parent) else {
            continue;
        };
        let mut counters = BTreeMap::from([
            ("framebuffer".to_string(), counter(p.framebuffer_bytes)),
            ("vgpus".to_string(), counter(p.max_vgpus as u64)),
        ]);
        for t in types.iter().filter(|t| t.parent == p.parent) {
            if let Some(c) = type_counter(&t.id) {
                counters.insert(c, counter(t.max_instances as u64));
            }
        }
        sets.push(CounterSet { name, counters });
    }
    let mut devices = Vec::new();
    for pl in placements(types) {
        let (Some(set), Some(tc)) = (counter_set(&pl.parent), type_counter(&pl.type_id)) else {
            continue;
        };
        if devices.len() == MAX_DEVICES {
            tracing::warn!("more than {MAX_DEVICES} placements: the rest are left out");
            break;
        }
        let string = |s: &str| DeviceAttribute {
            string: Some(s.to_string()),
            ..Default::default()
        };
        devices.push(Device {
            name: pl.name.clone(),
            attributes: Some(BTreeMap::from([
                ("type".to_string(), string(&pl.type_id)),
                ("parent".to_string(), string(&pl.parent)),
                (
                    "index".to_string(),
                    DeviceAttribute {
                        int: Some(pl.index as i64),
                        ..Default::default()
                    },
                ),
            ])),
            capacity: Some(BTreeMap::from([(
                "framebuffer".to_string(),
                DeviceCapacity {
                    value: Quantity(pl.framebuffer_bytes.to_string()),
                    ..Default::default()
                },
            )])),
            consumes_counters: Some(vec![DeviceCounterConsumption {
                counter_set: set,
                counters: BTreeMap::from([
                    ("framebuffer".to_string(), counter(pl.framebuffer_bytes)),
                    ("vgpus".to_string(), counter(1)),
                    (tc, counter(1)),
                ]),
            }]),
            ..Default::default()
        });
    }
    let slice = |suffix: &str, spec: ResourceSliceSpec| ResourceSlice {
        metadata: ObjectMeta {
            name: Some(format!("{node}-{DOMAIN}-{suffix}")),
            ..Default::default()
        },
        spec,
    };
    vec![
        slice(
            "counters",
            ResourceSliceSpec {
                driver: DOMAIN.into(),
                node_name: Some(node.into()),
                pool: pool.clone(),
                shared_counters: Some(sets),
                ..Default::default()
            },
        ),
        slice(
            "devices",
            ResourceSliceSpec {
                driver: DOMAIN.into(),
                node_name: Some(node.into()),
                pool,
                devices: Some(devices),
                ..Default::default()
            },
        ),
    ]
}
