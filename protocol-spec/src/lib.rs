//! iiot-acme protocol profile.
#![no_std]
