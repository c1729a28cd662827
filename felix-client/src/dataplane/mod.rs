//! dataplane: writes [`crate::calc::Desired`] into the kernel (stub: the dataplane owner
//! replaces this).
