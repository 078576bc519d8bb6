#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    qresidual::fuzz_entry::bnb_quant_state(data);
});
