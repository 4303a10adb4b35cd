//! Certificate authority hierarchy and issuance.
