//! The adversarial suite: every case is a hostile client (or a hostile file) against the
//! service over a real socket, named for the attack. Each asserts the status the attacker
//! gets and what is (or is not) stored afterwards. One module per area of attack; the
//! fixtures (`Service`: a server with an admin, alice and bob) are in `crate::http`.

mod accounts;
mod categories;
mod connections;
mod internals;
mod links;
mod multipart;
mod quota_race;
mod tus_flood;
mod visibility;
mod wire;
