//! The gRPC definitions (proto/), compiled by build.rs.
#![allow(clippy::all)]

/// The kubelet's device plugin API.
pub mod deviceplugin {
    tonic::include_proto!("v1beta1");
}
/// The kubelet's plugin registration API.
pub mod pluginregistration {
    tonic::include_proto!("pluginregistration");
}
/// The kubelet's DRA API.
pub mod dra {
    tonic::include_proto!("k8s.io.kubelet.pkg.apis.dra.v1");
}
/// KubeVirt's plugin hooks.
pub mod kubevirt {
    tonic::include_proto!("kubevirt.hooks.plugins.v1alpha1");
}
