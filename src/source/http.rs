//! HTTP(S) GET of a (date-templated) URL over `reqwest`; error reports PUT back.

use std::path::Path;

use super::{HttpConfig, RemoteFile, Source, SourceError};

pub struct HttpSource {
    url: String,
}

impl HttpSource {
    pub fn new(c: &HttpConfig, _today: chrono::NaiveDate) -> Result<HttpSource, SourceError> {
        let _ = c;
        Err(SourceError::Permanent("http: not implemented yet".into()))
    }
}

impl Source for HttpSource {
    fn describe(&self) -> String {
        self.url.clone()
    }
    fn list(&mut self) -> Result<Vec<RemoteFile>, SourceError> {
        unimplemented!()
    }
    fn fetch(&mut self, _file: &RemoteFile, _dest: &Path) -> Result<(), SourceError> {
        unimplemented!()
    }
    fn remove(&mut self, _name: &str) -> Result<(), SourceError> {
        unimplemented!()
    }
    fn move_to(&mut self, _name: &str, _dir: &str) -> Result<(), SourceError> {
        unimplemented!()
    }
    fn upload(&mut self, _dir: &str, _name: &str, _data: &[u8]) -> Result<(), SourceError> {
        unimplemented!()
    }
    fn can_tidy(&self) -> bool {
        false
    }
}
