//! Scans the Plugins folder (one subfolder per plugin, as in the original product)
//! and loads every plugin library found, keeping a verdict for each.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use plugin_api::loader::{self, LoadedPlugin};

/// The file ending of a plugin library on this platform (`so`, `dll`, `dylib`).
pub const LIBRARY_EXTENSION: &str = std::env::consts::DLL_EXTENSION;

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
            if child.is_dir() {
                let libraries = match sorted_children(&child) {
                    Ok(files) => files
                        .into_iter()
                        .filter(|f| is_library(f))
                        .collect::<Vec<_>>(),
                    Err(e) => {
                        registry.push(
                            name,
                            None,
                            Verdict::Failed(format!("cannot read the folder: {e}")),
                        );
                        continue;
                    }
                };
                if libraries.is_empty() {
                    registry.push(
                        name.clone(),
                        None,
                        Verdict::Failed(format!(
                            "no plugin library (*.{LIBRARY_EXTENSION}) in this folder"
                        )),
                    );
                }
                for library in libraries {
                    let verdict = load_unique(&library, &mut ids);
                    registry.push(name.clone(), Some(library), verdict);
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
    path.is_file() && path.extension().is_some_and(|e| e == LIBRARY_EXTENSION)
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
}
