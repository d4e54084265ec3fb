//! The standing hostile-capsule suite: each test attacks one isolation invariant from inside a
//! real guest and asserts the exact error the guest sees, that the attempt is audited where the
//! host audits it, and that a well-behaved capsule serving another principal keeps answering.
//! ARCHITECTURE.md's invariants name the test here that proves each.

mod files;
mod principals;
mod resources;
