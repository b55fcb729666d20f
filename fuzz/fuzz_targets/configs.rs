#![no_main]

use libfuzzer_sys::fuzz_target;

// The same bytes as an agent.toml and as a coordinator.toml.
fuzz_target!(|data: &[u8]| {
    strait_agent::fuzzing::agent_config(data);
    strait_coordinator::fuzzing::coordinator_config(data);
});
