//! The local folder source against the shared conformance suite.

mod conformance;

use std::path::PathBuf;
use std::time::Duration;

use milebatch::source::local::LocalSource;
use milebatch::source::{After, LocalConfig, Pickup, Ready, Source};

struct Local(tempfile::TempDir);

impl conformance::Fixture for Local {
    fn source(&self, inbox: &str) -> Box<dyn Source> {
        Box::new(LocalSource::new(&LocalConfig {
            dir: self.inbox_path(inbox),
            pickup: Pickup {
                pattern: glob::Pattern::new("*.csv").unwrap(),
                ready: Ready::Immediate,
                after: After::Move("processed".into()),
                move_failed: None,
                errors_dir: Some("errors".into()),
                timeout: Duration::from_secs(5),
                retries: 0,
            },
        }))
    }
    fn inbox_path(&self, inbox: &str) -> PathBuf {
        self.0.path().join(inbox)
    }
}

#[test]
fn local_conformance() {
    conformance::run_all(&Local(tempfile::tempdir().unwrap()));
}
