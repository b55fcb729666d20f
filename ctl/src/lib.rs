//! `straitctl`, the operator CLI, as a library: the client that sends one request to the
//! coordinator ([`client`]) and the rendering of its answers ([`render`]). It links no
//! store driver: operators' machines need only the wire protocol and the PKI.

pub mod client;
pub mod render;

pub use client::{exit, exit_code, request, stream, CtlError};
pub use render::*;
