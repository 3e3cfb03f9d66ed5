//! SFTP over `ssh2` (blocking; the daemon calls sources off the async runtime).

use std::path::Path;

use super::{RemoteFile, SftpConfig, Source, SourceError};

pub struct SftpSource {
    c: SftpConfig,
}

impl SftpSource {
    pub fn connect(c: &SftpConfig) -> Result<SftpSource, SourceError> {
        let _ = c;
        Err(SourceError::Permanent("sftp: not implemented yet".into()))
    }
}

impl Source for SftpSource {
    fn describe(&self) -> String {
        format!(
            "sftp://{}@{}:{}/{}",
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
