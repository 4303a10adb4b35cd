//! iiot-acme device client.
