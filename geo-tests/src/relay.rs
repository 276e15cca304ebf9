//! The WAN-emulating UDP relay, now part of the node crate (`meridian demo` runs it too): see
//! [`meridian_node::wan_relay`].

pub use meridian_node::wan_relay::*;
