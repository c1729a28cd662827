//! netlab: a network-namespace test bench (stub; the netlab owner replaces this).
