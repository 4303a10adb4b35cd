//! CSR parsing and policy.
