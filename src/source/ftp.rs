//! FTP and explicit FTPS over `suppaftp`.

use std::path::Path;

use super::{FtpConfig, RemoteFile, Source, SourceError};

pub struct FtpSource {
    c: FtpConfig,
}

impl FtpSource {
    pub fn connect(c: &FtpConfig) -> Result<FtpSource, SourceError> {
        let _ = c;
        Err(SourceError::Permanent("ftp: not implemented yet".into()))
    }
}

impl Source for FtpSource {
    fn describe(&self) -> String {
        format!(
            "ftp://{}@{}:{}/{}",
            self.c.user, self.c.host, self.c.port, self.c.dir
        )
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
}
