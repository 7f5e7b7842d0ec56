//! Verification: what the device must reach ([`GuestView`]), the byte-exact
//! check of a device's table against a strategy ([`layout::check`]), and the
//! one replay loop every caller uses ([`replay`]).

pub mod guest;
pub mod layout;
pub mod replay;
pub mod shape;

pub use guest::{GuestUnit, GuestView};
