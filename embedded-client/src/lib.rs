//! iiot-acme embedded client.
#![no_std]
