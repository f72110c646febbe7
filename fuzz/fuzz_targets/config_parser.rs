//! The config parser: any text gives a configuration or a list of issues, never a panic, and every issue's line
//! is a line of the text. (Built with `--cfg fuzzing`, the parser resolves no names and opens no files.)
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let lines = text.split('\n').count();
    match portico::config::parse(text) {
        Ok(_) => {}
        Err(issues) => {
            assert!(!issues.is_empty(), "refused without a reason");
            for issue in &issues {
                if let Some(line) = issue.line {
                    assert!((1..=lines).contains(&line), "{issue} is past the last line ({lines})");
                }
                assert!(!issue.key.is_empty(), "{issue} names no key");
            }
        }
    }
});
