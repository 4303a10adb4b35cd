#![no_main]

use std::sync::LazyLock;

use ca_server::fuzzing::{requests, Server};

static SERVER: LazyLock<Server> = LazyLock::new(Server::new);

libfuzzer_sys::fuzz_target!(|data: &[u8]| requests(data, &SERVER));
