//! The local folder source against the shared conformance suite.

mod conformance;

use std::path::PathBuf;

use milebatch::source::local::LocalSource;
use milebatch::source::{LocalConfig, Source};

struct Local(tempfile::TempDir);

impl conformance::Fixture for Local {
    fn source(&self, inbox: &str) -> Box<dyn Source> {
        Box::new(LocalSource::new(&LocalConfig {
            dir: self.inbox_path(inbox),
            pickup: conformance::test_pickup(0),
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
