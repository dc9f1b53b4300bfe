//! `middleware-engine plugins install FILE.zip`: installs a plugin archive into the
//! Plugins folder.
//!
//! The archive holds one folder, named like the plugin's folder in the Plugins folder,
//! with the plugin's library in it. It is unpacked into a hidden staging folder beside
//! the plugins (same filesystem, so the final rename is atomic), its library is loaded
//! as the engine would load it, and only then does it take the folder's place; the
//! replaced folder is kept as `<folder>.previous`.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use plugin_api::loader::{self, grouped, LoadedPlugin};
use zip::ZipArchive;

use super::registry::{self, Registry, LIBRARY_EXTENSION, PREVIOUS_SUFFIX};
use crate::settings::HostSettings;

/// What an archive may hold. A plugin archive holds a library and a few documents:
/// the caps only stop a ZIP bomb from filling the disk.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_entries: usize,
    pub max_unpacked_bytes: u64,
}

impl Limits {
    pub const DEFAULT: Self = Self {
        max_entries: 1_000,
        max_unpacked_bytes: 1024 * 1024 * 1024,
    };
}

/// Why an archive was not installed. Every message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("cannot read the archive {}: {source}", path.display())]
    ReadArchive { path: PathBuf, source: io::Error },
    #[error("{} is not a readable ZIP archive ({source}); give the plugin's .zip file as downloaded", path.display())]
    NotAZip {
        path: PathBuf,
        source: zip::result::ZipError,
    },
    #[error("the archive is empty; a plugin archive holds one folder with the plugin's library in it, e.g. dynamics365/libplugin_dynamics.{LIBRARY_EXTENSION}")]
    Empty,
    #[error("the archive holds {} entries, more than the {} a plugin archive may hold; refusing it (a possible ZIP bomb)", grouped(*count as u64), grouped(*max as u64))]
    TooManyEntries { count: usize, max: usize },
    #[error("the archive unpacks to {} bytes, more than the {} a plugin archive may hold; refusing it (a possible ZIP bomb)", grouped(*total), grouped(*max))]
    TooLarge { total: u64, max: u64 },
    #[error("the archive entry {name:?} has a name that is not valid text; rebuild the archive")]
    BadName { name: String },
    #[error("the archive entry {name:?} has an absolute path; a plugin archive holds only <folder>/<files>: rebuild it")]
    AbsolutePath { name: String },
    #[error("the archive entry {name:?} climbs out of its folder with \"..\"; a plugin archive holds only <folder>/<files>: rebuild it")]
    ParentDir { name: String },
    #[error("the archive entry {name:?} uses backslashes as separators; rebuild the archive with a tool that writes \"/\"")]
    Backslash { name: String },
    #[error("the archive entry {name:?} is a symbolic link; a plugin archive holds only files and folders: rebuild it without links")]
    Symlink { name: String },
    #[error("the archive entry {name:?} is a special file (device, pipe or socket); a plugin archive holds only files and folders: rebuild it")]
    SpecialFile { name: String },
    #[error("the archive entry {name:?} is encrypted; plugin archives are not encrypted: use the archive as published")]
    Encrypted { name: String },
    #[error("the archive holds {name:?} twice, or as both a file and a folder; rebuild it")]
    Duplicate { name: String },
    #[error("the archive holds the file {name:?} outside a folder; a plugin archive holds exactly one folder, the plugin's, with the library in it (e.g. dynamics365/libplugin_dynamics.{LIBRARY_EXTENSION})")]
    FileAtTop { name: String },
    #[error("the archive holds several top-level folders ({}); a plugin archive holds exactly one, the plugin's, with the library in it (e.g. dynamics365/libplugin_dynamics.{LIBRARY_EXTENSION})", folders.join(", "))]
    SeveralFolders { folders: Vec<String> },
    #[error("the archive's folder {folder:?} would be ignored by the engine (folders starting with \".\" or ending in \"{PREVIOUS_SUFFIX}\" are skipped); rename the folder inside the archive")]
    IgnoredFolderName { folder: String },
    #[error("the archive's folder {folder}/ holds no plugin library (*.{LIBRARY_EXTENSION}) directly in it; a plugin archive holds {folder}/<library>.{LIBRARY_EXTENSION}")]
    NoLibrary { folder: String },
    #[error("the archive's folder {folder}/ holds several plugin libraries ({}); a plugin folder holds exactly one: rebuild the archive", libraries.join(", "))]
    SeveralLibraries {
        folder: String,
        libraries: Vec<String>,
    },
    #[error("cannot unpack the archive entry {name:?}: {source}; the archive is damaged or uses an unsupported compression: download it again, or rebuild it with deflate")]
    Unpack {
        name: String,
        source: zip::result::ZipError,
    },
    #[error("the archive entry {name:?} is damaged: {source}; download the archive again")]
    Damaged { name: String, source: io::Error },
    #[error("the archive entry {name:?} declares {} bytes but holds {}{} bytes; the archive is damaged or forged: download it again", grouped(*declared), if *more { "more than " } else { "" }, grouped(*actual))]
    SizeMismatch {
        name: String,
        declared: u64,
        actual: u64,
        more: bool,
    },
    #[error("the archive's library {library} is not a plugin this engine can load: {reason}; nothing was installed")]
    NotAPlugin { library: String, reason: String },
    #[error("{} holds the plugin {existing}; this archive is the plugin {archive}: refusing to replace one plugin with another. Remove {} first to replace it, or install the archive under another folder name (rename the folder inside the archive)", folder.display(), folder.display())]
    OtherPlugin {
        folder: PathBuf,
        existing: String,
        archive: String,
    },
    #[error("the plugin {id} is already installed in {}; installing it again as {} would make a duplicate id at the next start. Remove {} first, or rename the folder inside the archive to {:?} to upgrade it", other.display(), target.display(), other.display(), other.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())]
    DuplicateId {
        id: String,
        other: PathBuf,
        target: PathBuf,
    },
    #[error("cannot {action} {}: {source}{}", path.display(), hint(source))]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn hint(error: &io::Error) -> &'static str {
    if error.kind() == io::ErrorKind::PermissionDenied {
        "; run the command as the user that owns the Plugins folder (or with sudo)"
    } else {
        ""
    }
}

fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> InstallError + 'a {
    move |source| InstallError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// What an installation did.
#[derive(Debug)]
pub struct Installed {
    pub id: String,
    pub name: String,
    pub version: String,
    /// The plugin's folder in the Plugins folder.
    pub folder: PathBuf,
    /// Set when the Plugins folder had to be created.
    pub created_plugins_dir: bool,
    pub replaced: Option<Replaced>,
}

/// What was in the plugin's folder before, now kept in `previous`.
#[derive(Debug)]
pub struct Replaced {
    pub what: Former,
    pub previous: PathBuf,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Former {
    /// The same plugin, at this version.
    Version(String),
    /// A library that did not load, for this reason.
    Broken(String),
    /// No plugin library at all.
    NoPlugin,
}

/// The command: installs `file` into the settings' Plugins folder and says what to do next.
pub fn cli(settings: &HostSettings, file: &Path) -> ExitCode {
    match install(&settings.plugins_dir, file, Limits::DEFAULT) {
        Ok(installed) => {
            print!("{}", report(&installed));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("middleware-engine: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What the command prints after an installation.
pub fn report(installed: &Installed) -> String {
    let mut text = String::new();
    if installed.created_plugins_dir {
        let dir = installed.folder.parent().unwrap_or(Path::new("."));
        text.push_str(&format!(
            "created the Plugins folder {} (it did not exist)\n",
            dir.display()
        ));
    }
    text.push_str(&format!(
        "installed {} \"{}\" {} in {}\n",
        installed.id,
        installed.name,
        installed.version,
        installed.folder.display()
    ));
    if let Some(replaced) = &installed.replaced {
        let what = match &replaced.what {
            Former::Version(v) => format!("{} {v}", installed.id),
            Former::Broken(reason) => format!("a library that did not load ({reason})"),
            Former::NoPlugin => "a folder without a plugin library".to_owned(),
        };
        text.push_str(&format!(
            "replaced {what}; it is kept in {}\n",
            replaced.previous.display()
        ));
    }
    // Libraries are never unloaded: a running engine keeps the old one until it restarts.
    text.push_str("restart the service to load it: systemctl restart middleware-engine\n");
    text
}

/// Installs the plugin archive `archive` into `plugins_dir`.
pub fn install(
    plugins_dir: &Path,
    archive: &Path,
    limits: Limits,
) -> Result<Installed, InstallError> {
    let file = File::open(archive).map_err(|source| InstallError::ReadArchive {
        path: archive.to_owned(),
        source,
    })?;
    let mut zip =
        ZipArchive::new(BufReader::new(file)).map_err(|source| InstallError::NotAZip {
            path: archive.to_owned(),
            source,
        })?;
    let layout = check_archive(&mut zip, limits)?;

    let created_plugins_dir = !plugins_dir.exists();
    if created_plugins_dir {
        create_dirs(plugins_dir)?;
    }
    let result = install_into(plugins_dir, &mut zip, &layout);
    if result.is_err() && created_plugins_dir {
        // Refused: no trace, not even the folder (it is empty again).
        let _ = std::fs::remove_dir(plugins_dir);
    }
    let mut installed = result?;
    installed.created_plugins_dir = created_plugins_dir;
    Ok(installed)
}

/// Unpacks, checks and swaps in the plugin; `plugins_dir` exists.
fn install_into<R: Read + Seek>(
    plugins_dir: &Path,
    zip: &mut ZipArchive<R>,
    layout: &Layout,
) -> Result<Installed, InstallError> {
    let target = plugins_dir.join(&layout.folder);
    let staging = Staging::create(plugins_dir.join(format!(
        ".{}.installing-{}",
        layout.folder,
        std::process::id()
    )))?;
    extract(zip, layout, &staging.path)?;

    // The real check: the library loads in this host as it would at the next start.
    let library = staging.path.join(&layout.library);
    let plugin = loader::load(&library).map_err(|e| {
        let name = format!("{}/{}", layout.folder, layout.library);
        InstallError::NotAPlugin {
            // The staging folder is gone by the time the admin reads this.
            reason: e.to_string().replace(&library.display().to_string(), &name),
            library: name,
        }
    })?;
    let former = existing(&target, &plugin)?;
    refuse_duplicate(plugins_dir, &layout.folder, &target, &plugin)?;

    let previous = plugins_dir.join(format!("{}{PREVIOUS_SUFFIX}", layout.folder));
    let replaced = match former {
        Some(what) => {
            remove_any(&previous, "remove the earlier previous version")?;
            std::fs::rename(&target, &previous).map_err(io_error("move aside", &target))?;
            Some(Replaced { what, previous })
        }
        None => None,
    };
    // A rename, never a copy over the old files: a running engine keeps its mapped
    // library intact until it restarts.
    if let Err(source) = std::fs::rename(&staging.path, &target) {
        if let Some(replaced) = &replaced {
            let _ = std::fs::rename(&replaced.previous, &target);
        }
        return Err(InstallError::Io {
            action: "move the unpacked plugin into",
            path: target,
            source,
        });
    }
    staging.disarm();
    // Best effort: the renames survive a power cut.
    if let Ok(dir) = File::open(plugins_dir) {
        let _ = dir.sync_all();
    }
    Ok(Installed {
        id: plugin.manifest.id.clone(),
        name: plugin.manifest.name.clone(),
        version: plugin.manifest.version.clone(),
        folder: target,
        created_plugins_dir: false,
        replaced,
    })
}

/// What an archive holds, once checked.
#[derive(Debug)]
pub struct Layout {
    /// The one top-level folder.
    pub folder: String,
    /// The library's name inside the folder.
    pub library: String,
    pub entries: Vec<Entry>,
}

#[derive(Debug)]
pub struct Entry {
    pub index: usize,
    /// The name in the archive, for messages.
    pub name: String,
    /// The path inside the plugin's folder (empty for the folder itself).
    pub path: PathBuf,
    pub is_dir: bool,
    pub size: u64,
}

const S_IFMT: u32 = 0o170_000;
const S_IFREG: u32 = 0o100_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFLNK: u32 = 0o120_000;

/// Checks every entry's name, type and size before anything is written.
pub fn check_archive<R: Read + Seek>(
    zip: &mut ZipArchive<R>,
    limits: Limits,
) -> Result<Layout, InstallError> {
    if zip.is_empty() {
        return Err(InstallError::Empty);
    }
    if zip.len() > limits.max_entries {
        return Err(InstallError::TooManyEntries {
            count: zip.len(),
            max: limits.max_entries,
        });
    }
    let mut folders: Vec<String> = Vec::new();
    let mut entries = Vec::new();
    let mut seen = HashSet::new();
    let mut total: u64 = 0;
    for index in 0..zip.len() {
        let (name, mode, encrypted, dir_name, declared) = {
            // Raw: reads the metadata without decrypting or decompressing anything.
            let file = zip
                .by_index_raw(index)
                .map_err(|source| InstallError::Unpack {
                    name: format!("#{index}"),
                    source,
                })?;
            let name = match file.name() {
                Ok(name) => name.into_owned(),
                Err(_) => {
                    return Err(InstallError::BadName {
                        name: String::from_utf8_lossy(file.name_raw()).into_owned(),
                    })
                }
            };
            (
                name,
                file.unix_mode(),
                file.encrypted(),
                file.is_dir(),
                file.size(),
            )
        };
        let components = components(&name)?;
        let kind = mode.map_or(0, |mode| mode & S_IFMT);
        if kind == S_IFLNK {
            return Err(InstallError::Symlink { name });
        }
        if ![0, S_IFREG, S_IFDIR].contains(&kind) {
            return Err(InstallError::SpecialFile { name });
        }
        if encrypted {
            return Err(InstallError::Encrypted { name });
        }
        let is_dir = dir_name || kind == S_IFDIR;
        let Some((top, rest)) = components.split_first() else {
            // Only "/" or "./": nothing to unpack, but no plugin archive looks so.
            return Err(InstallError::AbsolutePath { name });
        };
        if rest.is_empty() && !is_dir {
            return Err(InstallError::FileAtTop { name });
        }
        if !folders.contains(top) {
            folders.push(top.clone());
        }
        let path: PathBuf = rest.iter().collect();
        if !seen.insert(path.clone()) && !is_dir {
            return Err(InstallError::Duplicate { name });
        }
        let size = if is_dir { 0 } else { declared };
        total = total.saturating_add(size);
        if total > limits.max_unpacked_bytes {
            return Err(InstallError::TooLarge {
                total: sum_of_sizes(zip),
                max: limits.max_unpacked_bytes,
            });
        }
        entries.push(Entry {
            index,
            name,
            path,
            is_dir,
            size,
        });
    }
    let folder = match <[String; 1]>::try_from(folders) {
        Ok([folder]) => folder,
        Err(folders) => return Err(InstallError::SeveralFolders { folders }),
    };
    if registry::is_ignored(&folder) {
        return Err(InstallError::IgnoredFolderName { folder });
    }
    let libraries: Vec<String> = entries
        .iter()
        .filter(|e| !e.is_dir && e.path.components().count() == 1)
        .filter(|e| e.path.extension().is_some_and(|x| x == LIBRARY_EXTENSION))
        .map(|e| e.path.to_string_lossy().into_owned())
        .collect();
    let library = match <[String; 1]>::try_from(libraries) {
        Ok([library]) => library,
        Err(libraries) if libraries.is_empty() => return Err(InstallError::NoLibrary { folder }),
        Err(libraries) => return Err(InstallError::SeveralLibraries { folder, libraries }),
    };
    Ok(Layout {
        folder,
        library,
        entries,
    })
}

/// The declared size of everything in the archive, for the ZIP bomb message.
fn sum_of_sizes<R: Read + Seek>(zip: &mut ZipArchive<R>) -> u64 {
    (0..zip.len())
        .filter_map(|i| zip.by_index_raw(i).ok().map(|f| f.size()))
        .fold(0, u64::saturating_add)
}

/// The path components of an entry's name, refusing any that could leave the folder.
fn components(name: &str) -> Result<Vec<String>, InstallError> {
    let refuse = |make: fn(String) -> InstallError| Err(make(name.to_owned()));
    if name.contains('\\') {
        return refuse(|name| InstallError::Backslash { name });
    }
    if name.starts_with('/') || name.contains('\0') {
        return refuse(|name| InstallError::AbsolutePath { name });
    }
    let mut parts = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => return refuse(|name| InstallError::ParentDir { name }),
            part => parts.push(part.to_owned()),
        }
    }
    Ok(parts)
}

/// Writes every entry into `staging`: files 0644, the library and folders 0755.
pub fn extract<R: Read + Seek>(
    zip: &mut ZipArchive<R>,
    layout: &Layout,
    staging: &Path,
) -> Result<(), InstallError> {
    for entry in &layout.entries {
        let path = staging.join(&entry.path);
        if entry.is_dir {
            create_dirs_under(staging, &entry.path, &entry.name)?;
            continue;
        }
        if let Some(parent) = entry.path.parent() {
            create_dirs_under(staging, parent, &entry.name)?;
        }
        let mut file = zip
            .by_index(entry.index)
            .map_err(|source| InstallError::Unpack {
                name: entry.name.clone(),
                source,
            })?;
        let mut out = new_file(&path, &entry.name)?;
        // One byte more than declared tells a forged size apart; reading to the end
        // also makes the reader check the CRC.
        let actual = io::copy(&mut (&mut file).take(entry.size + 1), &mut out).map_err(
            |source| match source.kind() {
                io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof => {
                    InstallError::Damaged {
                        name: entry.name.clone(),
                        source,
                    }
                }
                _ => InstallError::Io {
                    action: "write",
                    path: path.clone(),
                    source,
                },
            },
        )?;
        if actual != entry.size {
            return Err(InstallError::SizeMismatch {
                name: entry.name.clone(),
                declared: entry.size,
                actual: actual.min(entry.size),
                more: actual > entry.size,
            });
        }
        out.sync_all().map_err(io_error("write", &path))?;
        let mode = if entry.path == Path::new(&layout.library) {
            0o755
        } else {
            0o644
        };
        set_mode(&path, mode)?;
    }
    Ok(())
}

fn new_file(path: &Path, name: &str) -> Result<File, InstallError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    options.open(path).map_err(|source| match source.kind() {
        // A file and a folder of the same name in the archive.
        io::ErrorKind::AlreadyExists | io::ErrorKind::IsADirectory => InstallError::Duplicate {
            name: name.to_owned(),
        },
        _ => InstallError::Io {
            action: "create",
            path: path.to_owned(),
            source,
        },
    })
}

/// Creates `relative`'s folders under `base` one by one, each 0755.
/// `name` is the archive entry being unpacked, for messages.
fn create_dirs_under(base: &Path, relative: &Path, name: &str) -> Result<(), InstallError> {
    let mut path = base.to_owned();
    for part in relative.components() {
        path.push(part);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => continue,
            Ok(_) => {
                return Err(InstallError::Duplicate {
                    name: name.to_owned(),
                })
            }
            Err(_) => {
                std::fs::create_dir(&path).map_err(io_error("create the folder", &path))?;
                set_mode(&path, 0o755)?;
            }
        }
    }
    Ok(())
}

fn create_dirs(path: &Path) -> Result<(), InstallError> {
    std::fs::create_dir_all(path).map_err(io_error("create the Plugins folder", path))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), InstallError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(io_error("set the permissions of", path))?;
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

/// What the plugin's folder holds now: `None` when there is no such folder. Refuses
/// when it holds another plugin; a library that does not load may be replaced (the
/// archive's one does load), and is kept as `.previous` like any other.
fn existing(target: &Path, plugin: &LoadedPlugin) -> Result<Option<Former>, InstallError> {
    let meta = match std::fs::symlink_metadata(target) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(InstallError::Io {
                action: "read",
                path: target.to_owned(),
                source,
            })
        }
    };
    if !meta.is_dir() && !target.is_dir() {
        return Ok(Some(Former::NoPlugin));
    }
    let mut libraries = std::fs::read_dir(target)
        .map_err(io_error("read the folder", target))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io_error("read the folder", target))?;
    libraries.retain(|p| p.is_file() && p.extension().is_some_and(|e| e == LIBRARY_EXTENSION));
    libraries.sort();
    let mut former = Former::NoPlugin;
    for library in libraries {
        match loader::load(&library) {
            Ok(old) if old.manifest.id != plugin.manifest.id => {
                return Err(InstallError::OtherPlugin {
                    folder: target.to_owned(),
                    existing: describe(&old),
                    archive: describe(plugin),
                })
            }
            Ok(old) => former = Former::Version(old.manifest.version),
            Err(e) => {
                if former == Former::NoPlugin {
                    former = Former::Broken(e.to_string());
                }
            }
        }
    }
    Ok(Some(former))
}

fn describe(plugin: &LoadedPlugin) -> String {
    format!(
        "{} (\"{}\" {})",
        plugin.manifest.id, plugin.manifest.name, plugin.manifest.version
    )
}

/// Refuses when another folder already holds a plugin with the archive's id: the
/// engine would refuse one of them at the next start.
fn refuse_duplicate(
    plugins_dir: &Path,
    folder: &str,
    target: &Path,
    plugin: &LoadedPlugin,
) -> Result<(), InstallError> {
    let registry = Registry::scan(plugins_dir);
    let other = registry
        .entries
        .iter()
        .filter(|e| e.folder != folder)
        .filter_map(|e| e.loaded().map(|p| (e, p)))
        .find(|(_, p)| p.manifest.id == plugin.manifest.id);
    match other {
        Some((entry, _)) => Err(InstallError::DuplicateId {
            id: plugin.manifest.id.clone(),
            other: plugins_dir.join(&entry.folder),
            target: target.to_owned(),
        }),
        None => Ok(()),
    }
}

/// Removes a file, link or folder (not following links); nothing there is fine.
fn remove_any(path: &Path, action: &'static str) -> Result<(), InstallError> {
    let result = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
    };
    result.map_err(io_error(action, path))
}

/// The staging folder, removed on every way out but success.
struct Staging {
    path: PathBuf,
    armed: bool,
}

impl Staging {
    fn create(path: PathBuf) -> Result<Self, InstallError> {
        // A leftover of a run with the same process id that was killed.
        remove_any(&path, "remove the leftover staging folder")?;
        std::fs::create_dir(&path).map_err(io_error("create the staging folder", &path))?;
        let staging = Self { path, armed: true };
        set_mode(&staging.path, 0o755)?;
        Ok(staging)
    }

    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Cursor, Write};

    use zip::write::{SimpleFileOptions, ZipWriter};
    use zip::CompressionMethod;

    use super::*;

    const SO: &str = LIBRARY_EXTENSION;

    fn options() -> SimpleFileOptions {
        SimpleFileOptions::default().compression_method(CompressionMethod::Deflated)
    }

    /// An in-memory archive of `(name, contents)` files.
    fn archive(files: &[(&str, &[u8])]) -> ZipArchive<Cursor<Vec<u8>>> {
        let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
        for (name, contents) in files {
            writer.start_file(*name, options()).expect("start");
            writer.write_all(contents).expect("write");
        }
        reopen(writer)
    }

    fn reopen(writer: ZipWriter<Cursor<Vec<u8>>>) -> ZipArchive<Cursor<Vec<u8>>> {
        let bytes = writer.finish().expect("finish").into_inner();
        ZipArchive::new(Cursor::new(bytes)).expect("reopen")
    }

    fn check(files: &[(&str, &[u8])]) -> Result<Layout, InstallError> {
        check_archive(&mut archive(files), Limits::DEFAULT)
    }

    fn message(result: Result<Layout, InstallError>) -> String {
        result.expect_err("refused").to_string()
    }

    #[test]
    fn a_plugin_archive_is_one_folder_with_one_library() {
        let lib = format!("p/libp.{SO}");
        let layout = check(&[
            ("p/", b""),
            (lib.as_str(), b"elf"),
            ("p/README.md", b"# p"),
            ("p/docs/notes.txt", b"n"),
        ])
        .expect("accepted");
        assert_eq!(layout.folder, "p");
        assert_eq!(layout.library, format!("libp.{SO}"));
        let paths: Vec<&Path> = layout.entries.iter().map(|e| e.path.as_path()).collect();
        assert_eq!(
            paths,
            vec![
                Path::new(""),
                Path::new(&format!("libp.{SO}")),
                Path::new("README.md"),
                Path::new("docs/notes.txt"),
            ]
        );
    }

    #[test]
    fn names_leaving_the_folder_are_refused() {
        let lib = format!("p/libp.{SO}");
        let cases: &[(&str, &str)] = &[
            (
                "p/../../etc/cron.d/x",
                "climbs out of its folder with \"..\"",
            ),
            ("../p/x", "climbs out of its folder"),
            ("/etc/passwd", "has an absolute path"),
            ("p\\..\\x", "uses backslashes"),
        ];
        for (name, expected) in cases {
            let text = message(check(&[(lib.as_str(), b"elf"), (name, b"x")]));
            assert!(
                text.contains(&format!("the archive entry {name:?}")) && text.contains(expected),
                "{name}: {text}"
            );
        }
    }

    #[test]
    fn symbolic_links_are_refused() {
        let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
        writer
            .start_file(format!("p/libp.{SO}"), options())
            .expect("start");
        writer.write_all(b"elf").expect("write");
        writer
            .add_symlink("p/passwd", "/etc/passwd", options())
            .expect("symlink");
        let text = message(check_archive(&mut reopen(writer), Limits::DEFAULT));
        assert_eq!(text, "the archive entry \"p/passwd\" is a symbolic link; a plugin archive holds only files and folders: rebuild it without links");
    }

    #[test]
    fn encrypted_entries_are_refused() {
        use zip::unstable::write::FileOptionsExt;
        let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
        let secret = options()
            .with_deprecated_encryption(b"password")
            .expect("options");
        writer
            .start_file(format!("p/libp.{SO}"), secret)
            .expect("start");
        writer.write_all(b"elf").expect("write");
        let text = message(check_archive(&mut reopen(writer), Limits::DEFAULT));
        assert!(
            text.starts_with(&format!("the archive entry \"p/libp.{SO}\" is encrypted")),
            "{text}"
        );
    }

    #[test]
    fn anything_but_exactly_one_top_folder_is_refused() {
        let lib = format!("p/libp.{SO}");
        let top = format!("libp.{SO}");
        assert_eq!(
            message(check(&[(top.as_str(), b"elf")])),
            format!("the archive holds the file \"libp.{SO}\" outside a folder; a plugin archive holds exactly one folder, the plugin's, with the library in it (e.g. dynamics365/libplugin_dynamics.{SO})")
        );
        assert_eq!(
            message(check(&[(lib.as_str(), b"elf"), ("__MACOSX/p/._x", b"")])),
            format!("the archive holds several top-level folders (p, __MACOSX); a plugin archive holds exactly one, the plugin's, with the library in it (e.g. dynamics365/libplugin_dynamics.{SO})")
        );
        assert!(matches!(
            check_archive(&mut archive(&[]), Limits::DEFAULT),
            Err(InstallError::Empty)
        ));
    }

    #[test]
    fn folder_names_the_registry_skips_are_refused() {
        for folder in [".p", "p.previous"] {
            let lib = format!("{folder}/libp.{SO}");
            let text = message(check(&[(lib.as_str(), b"elf")]));
            assert!(
                text.starts_with(&format!("the archive's folder {folder:?} would be ignored")),
                "{text}"
            );
        }
    }

    #[test]
    fn exactly_one_library_directly_in_the_folder() {
        let nested = format!("p/lib/libp.{SO}");
        assert_eq!(
            message(check(&[("p/README.md", b"x"), (nested.as_str(), b"elf")])),
            format!("the archive's folder p/ holds no plugin library (*.{SO}) directly in it; a plugin archive holds p/<library>.{SO}")
        );
        let (a, b) = (format!("p/liba.{SO}"), format!("p/libb.{SO}"));
        assert_eq!(
            message(check(&[(a.as_str(), b"elf"), (b.as_str(), b"elf")])),
            format!("the archive's folder p/ holds several plugin libraries (liba.{SO}, libb.{SO}); a plugin folder holds exactly one: rebuild the archive")
        );
    }

    #[test]
    fn zip_bombs_are_refused_by_entry_count_and_unpacked_size() {
        let lib = format!("p/libp.{SO}");
        let big = vec![0u8; 10_000];
        let files: Vec<(String, &[u8])> = (0..5)
            .map(|i| (format!("p/f{i}"), big.as_slice()))
            .chain([(lib.clone(), b"elf".as_slice())])
            .collect();
        let files: Vec<(&str, &[u8])> = files.iter().map(|(n, c)| (n.as_str(), *c)).collect();
        let limits = Limits {
            max_entries: 5,
            max_unpacked_bytes: 1_000_000,
        };
        assert_eq!(
            message(check_archive(&mut archive(&files), limits)),
            "the archive holds 6 entries, more than the 5 a plugin archive may hold; refusing it (a possible ZIP bomb)"
        );
        let limits = Limits {
            max_entries: 100,
            max_unpacked_bytes: 20_000,
        };
        assert_eq!(
            message(check_archive(&mut archive(&files), limits)),
            "the archive unpacks to 50,003 bytes, more than the 20,000 a plugin archive may hold; refusing it (a possible ZIP bomb)"
        );
    }

    /// An archive whose central directory declares `declared` bytes for the library.
    fn forged(contents: &[u8], declared: u32) -> Vec<u8> {
        let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
        writer
            .start_file(
                format!("p/libp.{SO}"),
                SimpleFileOptions::default().compression_method(CompressionMethod::Stored),
            )
            .expect("start");
        writer.write_all(contents).expect("write");
        let mut bytes = writer.finish().expect("finish").into_inner();
        // The uncompressed size sits 24 bytes into the central directory header.
        let central = bytes
            .windows(4)
            .rposition(|w| w == b"PK\x01\x02")
            .expect("central directory");
        bytes[central + 24..central + 28].copy_from_slice(&declared.to_le_bytes());
        bytes
    }

    fn extract_forged(contents: &[u8], declared: u32) -> String {
        let mut zip = ZipArchive::new(Cursor::new(forged(contents, declared))).expect("open");
        let layout = check_archive(&mut zip, Limits::DEFAULT).expect("names are fine");
        let dir = tempfile::tempdir().expect("tempdir");
        extract(&mut zip, &layout, dir.path())
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn a_size_that_differs_from_the_declared_one_is_refused() {
        // The reader stops at the declared size itself; the extra byte asked for
        // catches a reader that would not.
        assert_eq!(
            extract_forged(b"0123456789", 4),
            format!("the archive entry \"p/libp.{SO}\" is damaged: File is larger than its declared uncompressed size; download the archive again")
        );
        assert_eq!(
            extract_forged(b"0123456789", 20),
            format!("the archive entry \"p/libp.{SO}\" declares 20 bytes but holds 10 bytes; the archive is damaged or forged: download it again")
        );
    }

    #[test]
    fn an_entry_given_twice_is_refused() {
        let lib = format!("p/libp.{SO}");
        assert_eq!(
            message(check(&[
                (lib.as_str(), b"elf"),
                ("p/./README.md", b"a"),
                ("p/README.md", b"b")
            ])),
            "the archive holds \"p/README.md\" twice, or as both a file and a folder; rebuild it"
        );
        // A file, then a folder of the same name: found while unpacking.
        let mut zip = archive(&[(lib.as_str(), b"elf"), ("p/docs", b"a"), ("p/docs/x", b"b")]);
        let layout = check_archive(&mut zip, Limits::DEFAULT).expect("names are fine");
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            extract(&mut zip, &layout, dir.path())
                .expect_err("refused")
                .to_string(),
            "the archive holds \"p/docs/x\" twice, or as both a file and a folder; rebuild it"
        );
    }

    #[test]
    fn extraction_writes_the_folder_with_plain_permissions() {
        let lib = format!("p/libp.{SO}");
        let mut zip = archive(&[(lib.as_str(), b"elf"), ("p/docs/README.md", b"# p")]);
        let layout = check_archive(&mut zip, Limits::DEFAULT).expect("accepted");
        let dir = tempfile::tempdir().expect("tempdir");
        extract(&mut zip, &layout, dir.path()).expect("extracted");
        let lib = dir.path().join(format!("libp.{SO}"));
        let readme = dir.path().join("docs/README.md");
        assert_eq!(std::fs::read(&lib).expect("lib"), b"elf");
        assert_eq!(std::fs::read(&readme).expect("readme"), b"# p");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o7777;
            assert_eq!(mode(&lib), 0o755);
            assert_eq!(mode(&readme), 0o644);
            assert_eq!(mode(&dir.path().join("docs")), 0o755);
        }
    }

    #[test]
    fn a_refused_library_leaves_no_staging_folder_behind() {
        let plugins = tempfile::tempdir().expect("tempdir");
        let zip_path = plugins.path().join("p.zip");
        let mut writer = ZipWriter::new(File::create(&zip_path).expect("create"));
        writer
            .start_file(format!("p/libp.{SO}"), options())
            .expect("start");
        writer.write_all(b"not a library").expect("write");
        writer.finish().expect("finish");
        let dir = plugins.path().join("Plugins");
        std::fs::create_dir(&dir).expect("mkdir");

        let err = install(&dir, &zip_path, Limits::DEFAULT).expect_err("refused");
        assert!(
            err.to_string().starts_with(&format!(
                "the archive's library p/libp.{SO} is not a plugin this engine can load: "
            )),
            "{err}"
        );
        assert_eq!(std::fs::read_dir(&dir).expect("read").count(), 0);
    }

    #[test]
    fn a_plugins_folder_created_for_a_refused_archive_is_removed_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let zip_path = dir.path().join("p.zip");
        let mut writer = ZipWriter::new(File::create(&zip_path).expect("create"));
        writer
            .start_file(format!("p/libp.{SO}"), options())
            .expect("start");
        writer.write_all(b"not a library").expect("write");
        writer.finish().expect("finish");
        let plugins = dir.path().join("Plugins");

        install(&plugins, &zip_path, Limits::DEFAULT).expect_err("refused");
        assert!(!plugins.exists());
    }

    #[test]
    fn a_file_that_is_no_zip_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("plugin.zip");
        std::fs::write(&path, "hello").expect("write");
        let err = install(dir.path(), &path, Limits::DEFAULT).expect_err("refused");
        assert!(
            err.to_string().starts_with(&format!(
                "{} is not a readable ZIP archive (",
                path.display()
            )),
            "{err}"
        );
        let err = install(dir.path(), &dir.path().join("gone.zip"), Limits::DEFAULT)
            .expect_err("refused");
        assert!(
            err.to_string().starts_with("cannot read the archive "),
            "{err}"
        );
    }

    #[test]
    fn the_report_says_what_was_replaced_and_to_restart() {
        let installed = Installed {
            id: "p".into(),
            name: "P".into(),
            version: "2.0.0".into(),
            folder: PathBuf::from("/srv/Plugins/p"),
            created_plugins_dir: false,
            replaced: Some(Replaced {
                what: Former::Version("1.0.0".into()),
                previous: PathBuf::from("/srv/Plugins/p.previous"),
            }),
        };
        assert_eq!(
            report(&installed),
            "installed p \"P\" 2.0.0 in /srv/Plugins/p\nreplaced p 1.0.0; it is kept in /srv/Plugins/p.previous\nrestart the service to load it: systemctl restart middleware-engine\n"
        );
    }
}
