//! The bus's security, in one place: what each role may publish and subscribe to
//! ([`permissions`]), the server configuration and keys of a deployment ([`setup`]), and the
//! messages of the registry's auth callout that admits nodes by their cluster token
//! ([`callout`], over [`jwt`]).

pub mod callout;
pub mod jwt;
pub mod permissions;
pub mod setup;

pub use permissions::{Permissions, Role};
