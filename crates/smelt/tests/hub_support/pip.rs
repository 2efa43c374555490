//! A fake `pip` for the PyPI-fallback tests: a shell script that "downloads" wheels the test
//! built (real zip files) by copying them into `-d DIR`, logs its arguments, and fails like pip
//! for a package it does not have.

use std::io::Write;
use std::path::{Path, PathBuf};

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

pub struct FakePip {
    /// The script: pass it to `Hub::with_pip`.
    pub command: String,
    pub log: PathBuf,
    wheels: PathBuf,
}

impl FakePip {
    pub fn new(dir: &Path) -> FakePip {
        let wheels = dir.join("wheels");
        std::fs::create_dir_all(&wheels).unwrap();
        let log = dir.join("pip.log");
        let script = dir.join("fake-pip");
        let text = format!(
            r#"#!/bin/sh
echo "$@" >> '{log}'
[ "$1" = download ] || {{ echo "fake pip: only download" >&2; exit 2; }}
dest=""
while [ $# -gt 0 ]; do
  case "$1" in
    -d) dest="$2"; shift 2; continue ;;
    *==*)
      name=$(echo "${{1%%==*}}" | tr '.-' '__'); ver="${{1##*==}}"
      whl='{wheels}'/"$name-$ver-py3-none-any.whl"
      if [ ! -f "$whl" ]; then echo "ERROR: No matching distribution found for $1" >&2; exit 1; fi
      cp "$whl" "$dest/" ;;
  esac
  shift
done
"#,
            log = log.display(),
            wheels = wheels.display()
        );
        std::fs::write(&script, text).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        FakePip { command: script.display().to_string(), log, wheels }
    }

    /// Publish `name==version` as a wheel holding `members` (path inside the wheel, contents).
    pub fn publish(&self, requirement: &str, members: &[(&str, &[u8])]) {
        let (name, version) = requirement.split_once("==").unwrap();
        let dist = name.replace(['-', '.'], "_");
        let path = self.wheels.join(format!("{dist}-{version}-py3-none-any.whl"));
        let mut zip = ZipWriter::new(std::fs::File::create(path).unwrap());
        let opts = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
        for (member, data) in members {
            zip.start_file(*member, opts).unwrap();
            zip.write_all(data).unwrap();
        }
        zip.start_file(format!("{dist}-{version}.dist-info/METADATA"), opts).unwrap();
        zip.write_all(format!("Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n").as_bytes()).unwrap();
        zip.finish().unwrap();
    }

    pub fn calls(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
