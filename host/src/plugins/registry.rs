//! Scans the Plugins folder (one subfolder per plugin, as in the original product)
//! and loads every plugin library found, keeping a verdict for each.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use plugin_api::loader::{self, LoadedPlugin};

/// The file ending of a plugin library on this platform (`so`, `dll`, `dylib`).
pub const LIBRARY_EXTENSION: &str = std::env::consts::DLL_EXTENSION;

/// The ending of the folder `plugins install` keeps a replaced plugin in.
pub const PREVIOUS_SUFFIX: &str = ".previous";

/// Whether a scan skips this entry of the Plugins folder: the replaced version kept by
/// `plugins install` (loading it would make a duplicate id) and hidden entries (its
/// staging folder while it unpacks, editors' and archivers' leftovers).
pub fn is_ignored(name: &str) -> bool {
    name.starts_with('.') || name.ends_with(PREVIOUS_SUFFIX)
}

/// What became of one plugin library (or of a folder that holds none).
#[derive(Debug, Clone)]
pub enum Verdict {
    Loaded(Box<LoadedPlugin>),
    Failed(String),
}

#[derive(Debug, Clone)]
pub struct PluginEntry {
    /// The subfolder of the Plugins folder (or the stray file's own name).
    pub folder: String,
    /// The library file, when there is one.
    pub file: Option<PathBuf>,
    pub verdict: Verdict,
}

impl PluginEntry {
    pub fn loaded(&self) -> Option<&LoadedPlugin> {
        match &self.verdict {
            Verdict::Loaded(p) => Some(p),
            Verdict::Failed(_) => None,
        }
    }

    /// The plugin's id when loaded, else its folder name.
    pub fn id(&self) -> &str {
        self.loaded().map_or(&self.folder, |p| &p.manifest.id)
    }
}

/// Every plugin found at start, loaded or not.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    pub dir: PathBuf,
    pub entries: Vec<PluginEntry>,
    /// Set when the folder itself could not be read.
    pub problem: Option<String>,
}

impl Registry {
    /// Loads every plugin under `dir`. One bad plugin never stops the others.
    pub fn scan(dir: &Path) -> Self {
        let mut registry = Self {
            dir: dir.to_owned(),
            ..Self::default()
        };
        let children = match sorted_children(dir) {
            Ok(children) => children,
            Err(e) => {
                registry.problem = Some(format!(
                    "cannot read the Plugins folder {}: {e}",
                    dir.display()
                ));
                return registry;
            }
        };
        let mut ids: HashMap<String, PathBuf> = HashMap::new();
        for child in children {
            let name = file_name(&child);
            if is_ignored(&name) {
                continue;
            }
            // A broken link may have meant a plugin folder or a library: say so either way.
            if let Some(reason) = broken_link(&child) {
                registry.push(name, None, Verdict::Failed(reason));
            } else if child.is_dir() {
                let files = match sorted_children(&child) {
                    Ok(files) => files,
                    Err(e) => {
                        registry.push(
                            name,
                            None,
                            Verdict::Failed(format!("cannot read the folder: {e}")),
                        );
                        continue;
                    }
                };
                let mut found = false;
                for file in files.into_iter().filter(|f| has_library_extension(f)) {
                    let verdict = if let Some(reason) = broken_link(&file) {
                        Verdict::Failed(reason)
                    } else if file.is_file() {
                        load_unique(&file, &mut ids)
                    } else {
                        continue;
                    };
                    found = true;
                    registry.push(name.clone(), Some(file), verdict);
                }
                if !found {
                    registry.push(
                        name,
                        None,
                        Verdict::Failed(format!(
                            "no plugin library (*.{LIBRARY_EXTENSION}) in this folder"
                        )),
                    );
                }
            } else if is_library(&child) {
                registry.push(
                    name,
                    Some(child),
                    Verdict::Failed("plugin libraries go in their own subfolder: move it to Plugins/<plugin name>/".into()),
                );
            }
        }
        for entry in &registry.entries {
            match &entry.verdict {
                Verdict::Loaded(p) => tracing::info!(
                    plugin = %p.manifest.id, version = %p.manifest.version,
                    path = %p.path.display(), "plugin loaded"
                ),
                Verdict::Failed(reason) => tracing::error!(
                    folder = %entry.folder,
                    file = %entry.file.as_deref().map(|f| f.display().to_string()).unwrap_or_default(),
                    "plugin not loaded: {reason}"
                ),
            }
        }
        registry
    }

    fn push(&mut self, folder: String, file: Option<PathBuf>, verdict: Verdict) {
        self.entries.push(PluginEntry {
            folder,
            file,
            verdict,
        });
    }

    pub fn plugin(&self, id: &str) -> Option<&LoadedPlugin> {
        self.entries
            .iter()
            .filter_map(PluginEntry::loaded)
            .find(|p| p.manifest.id == id)
    }

    pub fn loaded(&self) -> impl Iterator<Item = &LoadedPlugin> {
        self.entries.iter().filter_map(PluginEntry::loaded)
    }

    pub fn failed_count(&self) -> usize {
        self.entries.iter().filter(|e| e.loaded().is_none()).count()
    }
}

fn load_unique(library: &Path, ids: &mut HashMap<String, PathBuf>) -> Verdict {
    match loader::load(library) {
        Ok(plugin) => match ids.get(&plugin.manifest.id) {
            Some(first) => Verdict::Failed(format!(
                "another plugin with the id {:?} is already loaded from {}; remove one of them",
                plugin.manifest.id,
                first.display()
            )),
            None => {
                ids.insert(plugin.manifest.id.clone(), library.to_owned());
                Verdict::Loaded(Box::new(plugin))
            }
        },
        Err(e) => Verdict::Failed(e.to_string()),
    }
}

fn is_library(path: &Path) -> bool {
    path.is_file() && has_library_extension(path)
}

fn has_library_extension(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == LIBRARY_EXTENSION)
}

/// Why `path`, a symbolic link, cannot be followed; `None` when it is no link or a
/// working one. `is_dir()` and `is_file()` answer false for these, which used to skip
/// them without a word.
fn broken_link(path: &Path) -> Option<String> {
    if !std::fs::symlink_metadata(path)
        .ok()?
        .file_type()
        .is_symlink()
    {
        return None;
    }
    let error = std::fs::metadata(path).err()?;
    let target = std::fs::read_link(path)
        .map(|t| t.display().to_string())
        .unwrap_or_else(|e| format!("(unreadable: {e})"));
    let link = path.display();
    Some(if is_link_loop(&error) {
        format!("symbolic link loop: {link} -> {target} leads back to itself and never reaches a file; point the link at the plugin's folder or library")
    } else if error.kind() == std::io::ErrorKind::NotFound {
        format!("symbolic link to a missing file: {link} -> {target} does not exist; restore it or remove the link")
    } else {
        format!("symbolic link that cannot be followed: {link} -> {target}: {error}")
    })
}

/// ELOOP, which std has no stable `ErrorKind` for.
fn is_link_loop(error: &std::io::Error) -> bool {
    #[cfg(unix)]
    return error.raw_os_error() == Some(libc::ELOOP);
    #[cfg(not(unix))]
    return false;
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn sorted_children(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut children = std::fs::read_dir(dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()?;
    children.sort();
    Ok(children)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_folder_is_a_problem_not_a_crash() {
        let registry = Registry::scan(Path::new("/nonexistent/Plugins"));
        assert!(registry.entries.is_empty());
        assert!(registry
            .problem
            .as_deref()
            .is_some_and(|p| p.starts_with("cannot read the Plugins folder /nonexistent/Plugins")));
    }

    #[test]
    fn empty_subfolders_and_stray_libraries_are_reported_and_other_files_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("empty")).expect("mkdir");
        std::fs::write(dir.path().join("README.txt"), "hello").expect("write");
        std::fs::write(dir.path().join(format!("stray.{LIBRARY_EXTENSION}")), "x").expect("write");
        let registry = Registry::scan(dir.path());
        let verdicts: Vec<(String, String)> = registry
            .entries
            .iter()
            .map(|e| match &e.verdict {
                Verdict::Failed(r) => (e.folder.clone(), r.clone()),
                Verdict::Loaded(_) => (e.folder.clone(), "loaded".into()),
            })
            .collect();
        assert_eq!(
            verdicts,
            vec![
                (
                    "empty".to_owned(),
                    format!("no plugin library (*.{LIBRARY_EXTENSION}) in this folder")
                ),
                (
                    format!("stray.{LIBRARY_EXTENSION}"),
                    "plugin libraries go in their own subfolder: move it to Plugins/<plugin name>/"
                        .to_owned()
                ),
            ]
        );
        assert_eq!(registry.failed_count(), 2);
    }

    #[test]
    fn previous_versions_and_hidden_folders_are_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let so = LIBRARY_EXTENSION;
        for folder in ["p.previous", ".p.installing-42", ".hidden", "p"] {
            std::fs::create_dir(dir.path().join(folder)).expect("mkdir");
            std::fs::write(dir.path().join(folder).join(format!("libp.{so}")), "x").expect("write");
        }
        let registry = Registry::scan(dir.path());
        let folders: Vec<&str> = registry.entries.iter().map(|e| e.folder.as_str()).collect();
        assert_eq!(folders, vec!["p"]);
    }

    #[cfg(unix)]
    #[test]
    fn broken_symbolic_links_are_reported_and_working_ones_followed() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().expect("tempdir");
        let plugins = dir.path().join("Plugins");
        let so = LIBRARY_EXTENSION;
        std::fs::create_dir_all(plugins.join("inner")).expect("mkdir");
        std::fs::create_dir_all(dir.path().join("elsewhere")).expect("mkdir");
        // Top level: a loop of two links, a dangling link, a link to an empty folder.
        symlink(plugins.join("loop-b"), plugins.join("loop-a")).expect("symlink");
        symlink(plugins.join("loop-a"), plugins.join("loop-b")).expect("symlink");
        symlink(dir.path().join("gone"), plugins.join("dangling")).expect("symlink");
        symlink(dir.path().join("elsewhere"), plugins.join("linked")).expect("symlink");
        // In a plugin's folder: a link to itself, and a dangling link to a library.
        let own = plugins.join("inner").join(format!("libself.{so}"));
        symlink(&own, &own).expect("symlink");
        symlink(
            dir.path().join(format!("libgone.{so}")),
            plugins.join("inner").join(format!("libgone.{so}")),
        )
        .expect("symlink");

        let registry = Registry::scan(&plugins);
        let verdicts: Vec<(String, String)> = registry
            .entries
            .iter()
            .map(|e| match &e.verdict {
                Verdict::Failed(r) => (e.folder.clone(), r.clone()),
                Verdict::Loaded(_) => (e.folder.clone(), "loaded".into()),
            })
            .collect();
        let (p, d) = (plugins.display(), dir.path().display());
        assert_eq!(
            verdicts,
            vec![
                ("dangling".to_owned(), format!("symbolic link to a missing file: {p}/dangling -> {d}/gone does not exist; restore it or remove the link")),
                ("inner".to_owned(), format!("symbolic link to a missing file: {p}/inner/libgone.{so} -> {d}/libgone.{so} does not exist; restore it or remove the link")),
                ("inner".to_owned(), format!("symbolic link loop: {p}/inner/libself.{so} -> {p}/inner/libself.{so} leads back to itself and never reaches a file; point the link at the plugin's folder or library")),
                ("linked".to_owned(), format!("no plugin library (*.{so}) in this folder")),
                ("loop-a".to_owned(), format!("symbolic link loop: {p}/loop-a -> {p}/loop-b leads back to itself and never reaches a file; point the link at the plugin's folder or library")),
                ("loop-b".to_owned(), format!("symbolic link loop: {p}/loop-b -> {p}/loop-a leads back to itself and never reaches a file; point the link at the plugin's folder or library")),
            ]
        );
    }
}
