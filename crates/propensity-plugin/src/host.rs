//! The host side: finding plugin libraries, checking their hash and ABI version, loading them
//! (never unloading), and calling them with the Arrow C Data Interface.
//!
//! Order of checks when a job names a plugin, each failure a message naming the file:
//!
//! 1. the library is found (a path, or `lib<name>.so` / `<name>.dll` / `lib<name>.dylib` in
//!    the plugin directories, in order);
//! 2. its sha256 equals the job's pin, if any: **before** the library is loaded, so a library
//!    that does not match never runs code in the process. The bytes hashed are the bytes
//!    loaded: the file is read once, and what is mapped is a sealed anonymous memory copy of
//!    those bytes (Linux `memfd_create`; elsewhere a fresh `mkdtemp` folder), never a path in a
//!    shared folder that someone could pre-create or swap;
//! 3. `propensity_plugin_abi_version()` equals [`ABI_VERSION`]: before any other call;
//! 4. its metadata names the goal type the job asked for.
//!
//! Loaded libraries stay loaded until the process ends: labels and messages the plugin made
//! are released through its own code, and unloading code that may still be referenced is how
//! plugin hosts crash.

#![allow(unsafe_code)]

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use arrow_array::ffi::{FFI_ArrowArray, FFI_ArrowSchema, from_ffi, to_ffi};
use arrow_array::{Array, StringArray, StructArray, make_array};
use sha2::{Digest, Sha256};

use crate::abi::{self, CallResult, LabelInput, PluginV1};
use crate::{ABI_VERSION, Labels, Metadata, Validated, Window};

/// Why a plugin could not be found, loaded or called. The message names the plugin and the
/// file; the hint says what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginError {
    /// What went wrong.
    pub message: String,
    /// What to do about it.
    pub hint: Option<String>,
}

impl PluginError {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            hint: None,
        }
    }
    fn hint(mut self, h: impl Into<String>) -> Self {
        self.hint = Some(h.into());
        self
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PluginError {}

/// The file name of plugin `name` on this platform (`librepeat_purchase.so`, …).
pub fn library_file_name(name: &str) -> String {
    format!(
        "{}{name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )
}

/// True when `plugin` (as written in a job) is a path rather than a name.
pub fn is_path(plugin: &str) -> bool {
    plugin.contains('/') || plugin.contains('\\') || plugin.ends_with(std::env::consts::DLL_SUFFIX)
}

/// The plugin directories, in search order: `PROPENSITY_PLUGIN_PATH` (separated like `PATH`),
/// then `<state>/plugins`, then the folder of the `propensity` executable and its `plugins/`
/// subfolder (where `cargo build` and the packages put them).
pub fn search_path(env_value: Option<&str>, state_dir: Option<&Path>) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = env_value
        .map(|v| {
            std::env::split_paths(v)
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default();
    if let Some(s) = state_dir {
        dirs.push(s.join("plugins"));
    }
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        // Test binaries live in `target/<profile>/deps`, next to every proc-macro library of
        // the build: search one level up, never `deps` itself.
        if exe_dir.file_name().is_some_and(|n| n == "deps") {
            if let Some(up) = exe_dir.parent() {
                dirs.push(up.join("plugins"));
                dirs.push(up.to_path_buf());
            }
        } else {
            dirs.push(exe_dir.join("plugins"));
            dirs.push(exe_dir);
        }
    }
    let mut seen = Vec::new();
    dirs.retain(|d| {
        if seen.contains(d) {
            false
        } else {
            seen.push(d.clone());
            true
        }
    });
    dirs
}

/// Where plugin `plugin` (a name or a path, as written in a job) is. Relative paths start at
/// `base` (the job file's folder).
pub fn locate(plugin: &str, base: &Path, dirs: &[PathBuf]) -> Result<PathBuf, PluginError> {
    if is_path(plugin) {
        let p = Path::new(plugin);
        let p = if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        };
        return if p.is_file() {
            Ok(p)
        } else {
            Err(
                PluginError::new(format!("plugin library `{}` does not exist", p.display()))
                    .hint("check the path (relative paths start at the job file's folder)"),
            )
        };
    }
    let file = library_file_name(plugin);
    for d in dirs {
        let p = d.join(&file);
        if p.is_file() {
            return Ok(p);
        }
    }
    let searched: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    Err(PluginError::new(format!(
        "plugin `{plugin}` not found: no `{file}` in {}",
        if searched.is_empty() {
            "any plugin directory".to_owned()
        } else {
            searched.join(", ")
        }
    ))
    .hint(
        "build it (`cargo build -p <plugin crate>`), put the library in one of these folders or \
         in PROPENSITY_PLUGIN_PATH, or give its path: `plugin = \"path/to/lib.so\"`; \
         `propensity plugins list` shows what is found",
    ))
}

/// The sha256 of a file, lower-case hex.
pub fn sha256_file(path: &Path) -> Result<String, PluginError> {
    let bytes = std::fs::read(path)
        .map_err(|e| PluginError::new(format!("cannot read `{}`: {e}", path.display())))?;
    Ok(sha256_hex(&bytes))
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A loaded plugin. Cheap to clone; the library stays loaded for the life of the process.
#[derive(Clone)]
pub struct Plugin {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    sha256: String,
    abi_version: u32,
    metadata: Metadata,
    entry: PluginV1,
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.inner.metadata.name)
            .field("path", &self.inner.path)
            .field("sha256", &self.inner.sha256)
            .finish()
    }
}

/// Libraries loaded by this process, by canonical path: (sha256, plugin).
fn loaded() -> &'static Mutex<HashMap<PathBuf, Plugin>> {
    static L: OnceLock<Mutex<HashMap<PathBuf, Plugin>>> = OnceLock::new();
    L.get_or_init(|| Mutex::new(HashMap::new()))
}

impl Plugin {
    /// Loads the library at `path` after checking its hash against `pin` (when given) and
    /// its ABI version. A library already loaded by this process is reused when its file is
    /// unchanged.
    pub fn load(path: &Path, pin: Option<&str>) -> Result<Self, PluginError> {
        let shown = path.display().to_string();
        let canonical = path
            .canonicalize()
            .map_err(|e| PluginError::new(format!("plugin library `{shown}`: {e}")))?;
        let bytes = std::fs::read(&canonical)
            .map_err(|e| PluginError::new(format!("cannot read `{shown}`: {e}")))?;
        let sha256 = sha256_hex(&bytes);
        if let Some(pin) = pin
            && !pin.eq_ignore_ascii_case(&sha256)
        {
            return Err(PluginError::new(format!(
                "plugin library `{shown}` has sha256 {sha256}, but the job pins {pin}; it was not loaded"
            ))
            .hint(
                "if this build is the one you trust, update `sha256` in the job (`propensity plugins check <library>` prints it); otherwise restore the pinned build",
            ));
        }
        let mut cache = loaded()
            .lock()
            .map_err(|_| PluginError::new("the plugin registry is poisoned"))?;
        if let Some(p) = cache.get(&canonical) {
            if p.inner.sha256 == sha256 {
                return Ok(p.clone());
            }
            return Err(PluginError::new(format!(
                "plugin library `{shown}` changed on disk (sha256 {sha256}) after this process loaded it (sha256 {}); a loaded library cannot be replaced",
                p.inner.sha256
            ))
            .hint("restart the process to use the new build"));
        }
        // The bytes hashed are the bytes loaded (see `stage`): a file replaced between the
        // check and the load, or overwritten in place later, changes nothing in this process.
        let staged = stage(&canonical, &bytes)?;
        let lib = open(&staged.path);
        if let Some(dir) = &staged.cleanup {
            let _ = std::fs::remove_dir_all(dir);
        }
        let lib = lib.map_err(|e| {
            PluginError::new(format!("cannot load plugin library `{shown}`: {e}"))
                .hint("a goal plugin is a `cdylib` built for this platform with the propensity-plugin SDK")
        })?;
        // The memory file stays open as long as the library is mapped: for ever.
        if let Some(file) = staged.keep {
            std::mem::forget(file);
        }
        // SAFETY: the symbol, when present, is the SDK's `extern "C" fn() -> u32`; the name
        // is reserved for it.
        let version: libloading::Symbol<'static, extern "C" fn() -> u32> =
            unsafe { lib.get(abi::VERSION_SYMBOL) }.map_err(|_| {
                PluginError::new(format!(
                    "`{shown}` is not a Propensity plugin: it has no `propensity_plugin_abi_version` symbol"
                ))
                .hint("export the goal with `propensity_plugin::export_goal!(YourGoal);`")
            })?;
        let v = version();
        if v != ABI_VERSION {
            return Err(PluginError::new(format!(
                "plugin library `{shown}` was built for plugin ABI version {v}, but this propensity speaks version {ABI_VERSION}"
            ))
            .hint(format!(
                "rebuild the plugin against a propensity-plugin SDK with ABI version {ABI_VERSION}"
            )));
        }
        // SAFETY: the ABI version matched, so the symbol is `extern "C" fn() -> PluginV1`.
        let entry: libloading::Symbol<'static, extern "C" fn() -> PluginV1> =
            unsafe { lib.get(abi::ENTRY_SYMBOL) }.map_err(|_| {
                PluginError::new(format!(
                    "plugin library `{shown}` reports ABI version {v} but has no `propensity_plugin_v1` entry"
                ))
            })?;
        let entry = entry();
        // SAFETY: an entry of the table the library exported for this ABI version.
        let json = call(&shown, unsafe { (entry.metadata)() }, entry.free_bytes)?;
        let metadata: Metadata = serde_json::from_slice(&json).map_err(|e| {
            PluginError::new(format!(
                "plugin library `{shown}`: unreadable metadata: {e}"
            ))
        })?;
        let plugin = Plugin {
            inner: Arc::new(Inner {
                path: canonical.clone(),
                sha256,
                abi_version: v,
                metadata,
                entry,
            }),
        };
        cache.insert(canonical, plugin.clone());
        Ok(plugin)
    }

    /// The library's file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }
    /// The sha256 of the library file, lower-case hex.
    pub fn sha256(&self) -> &str {
        &self.inner.sha256
    }
    /// The ABI version the library reported.
    pub fn abi_version(&self) -> u32 {
        self.inner.abi_version
    }
    /// What the plugin says about itself.
    pub fn metadata(&self) -> &Metadata {
        &self.inner.metadata
    }

    fn who(&self) -> String {
        format!(
            "plugin `{}` ({})",
            self.inner.metadata.name,
            self.inner.path.display()
        )
    }

    /// Checks a job's parameters; returns the event fields the plugin reads with them.
    pub fn validate(
        &self,
        params: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Validated, PluginError> {
        let json = serde_json::to_vec(params).map_err(|e| PluginError::new(e.to_string()))?;
        // SAFETY: `json` is alive and `len` bytes long for the call.
        let out = unsafe { (self.inner.entry.validate)(json.as_ptr(), json.len()) };
        let answer = call(&self.who(), out, self.inner.entry.free_bytes)?;
        serde_json::from_slice(&answer).map_err(|e| {
            PluginError::new(format!("{}: unreadable validation answer: {e}", self.who()))
        })
    }

    /// Labels `profiles` from their `events` in `window` (see [`crate::Batch`] for the
    /// layout). The answer is checked: one label per profile, known profiles only, each once.
    /// Returns the labels in the order of `profiles`.
    pub fn label(
        &self,
        params: &serde_json::Map<String, serde_json::Value>,
        profiles: &StringArray,
        events: &StructArray,
        window: Window,
    ) -> Result<Vec<bool>, PluginError> {
        let mut seen = std::collections::HashSet::with_capacity(profiles.len());
        if let Some(i) = (0..profiles.len()).find(|&i| !seen.insert(profiles.value(i))) {
            return Err(PluginError::new(format!(
                "profile `{}` is listed twice in one labelling call",
                profiles.value(i)
            )));
        }
        let json = serde_json::to_vec(params).map_err(|e| PluginError::new(e.to_string()))?;
        let export = |d: &arrow_data::ArrayData, what: &str| {
            to_ffi(d).map_err(|e| PluginError::new(format!("exporting the {what}: {e}")))
        };
        let (pa, ps) = export(&profiles.to_data(), "profiles")?;
        let (ea, es) = export(&events.to_data(), "events")?;
        let mut input = LabelInput {
            profiles: pa,
            profiles_schema: ps,
            events: ea,
            events_schema: es,
            window,
        };
        let mut out_array = FFI_ArrowArray::empty();
        let mut out_schema = FFI_ArrowSchema::empty();
        // SAFETY: every pointer is to a live, exclusive local for the duration of the call;
        // the plugin moves the input arrays out (or leaves them, and `input`'s drop releases
        // them) and writes its labels into the empty output slots.
        let out = unsafe {
            (self.inner.entry.label)(
                json.as_ptr(),
                json.len(),
                &mut input,
                &mut out_array,
                &mut out_schema,
            )
        };
        call(&self.who(), out, self.inner.entry.free_bytes)?;
        if out_array.is_released() {
            return Err(PluginError::new(format!(
                "{} reported success but returned no labels",
                self.who()
            )));
        }
        // The answer is checked before it is used: a malformed array from a plugin written
        // without the SDK must be an error, not undefined behaviour or a panic here.
        let imported = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: the plugin wrote a C Data Interface array and its schema into the
            // slots (checked not released above); `from_ffi` takes ownership.
            unsafe { from_ffi(out_array, &out_schema) }.and_then(|d| d.validate_full().map(|()| d))
        }));
        let data = match imported {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => {
                return Err(PluginError::new(format!(
                    "{}: unreadable labels: {e}",
                    self.who()
                )));
            }
            Err(_) => {
                return Err(PluginError::new(format!(
                    "{}: malformed labels (the array does not match its schema)",
                    self.who()
                )));
            }
        };
        let labels = make_array(data);
        let labels = labels
            .as_any()
            .downcast_ref::<StructArray>()
            .ok_or_else(|| {
                PluginError::new(format!("{}: the labels are not a struct", self.who()))
            })?;
        let pairs = Labels::from_struct(labels)
            .map_err(|e| PluginError::new(format!("{}: {e}", self.who())))?;
        self.match_labels(profiles, pairs)
    }

    fn match_labels(
        &self,
        profiles: &StringArray,
        pairs: Vec<(String, bool)>,
    ) -> Result<Vec<bool>, PluginError> {
        if pairs.len() != profiles.len() {
            return Err(PluginError::new(format!(
                "{} returned {} labels for {} profiles; a goal plugin labels every profile it is given, once",
                self.who(),
                pairs.len(),
                profiles.len()
            )));
        }
        let index: HashMap<&str, usize> = (0..profiles.len())
            .map(|i| (profiles.value(i), i))
            .collect();
        let mut out: Vec<Option<bool>> = vec![None; profiles.len()];
        for (id, label) in pairs {
            let Some(&i) = index.get(id.as_str()) else {
                return Err(PluginError::new(format!(
                    "{} returned a label for profile `{id}`, which it was not given",
                    self.who()
                )));
            };
            if out[i].replace(label).is_some() {
                return Err(PluginError::new(format!(
                    "{} labelled profile `{id}` twice",
                    self.who()
                )));
            }
        }
        Ok(out.into_iter().map(|l| l.unwrap_or(false)).collect())
    }
}

/// The pinned bytes, staged where no one else can change them, and the path to load them by.
struct Staged {
    path: PathBuf,
    /// Kept open for the life of the process (the library is never unloaded): the loader
    /// knows a library by its path, so `/proc/self/fd/N` must never name another file.
    keep: Option<std::fs::File>,
    /// A private folder to remove once the library is mapped.
    cleanup: Option<PathBuf>,
}

/// Stages `bytes` (the bytes that were hashed) for loading, so that the library loaded is
/// exactly the one hashed, whatever happens to the original file or to shared folders.
///
/// On Linux the bytes go to an anonymous, sealed memory file (`memfd_create`, then
/// `F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL`) loaded through
/// `/proc/self/fd/N`: no path exists that another user, or this one, could swap, and it works
/// with a read-only `/tmp`. Elsewhere, or where memory files are refused, they go to a fresh
/// folder made by `mkdtemp` (mode 0700, an unpredictable name, so it cannot be pre-created)
/// and a file created with `O_EXCL | O_NOFOLLOW`, both removed once the library is mapped.
fn stage(original: &Path, bytes: &[u8]) -> Result<Staged, PluginError> {
    let name = original
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| library_file_name("plugin"));
    #[cfg(target_os = "linux")]
    if let Ok(file) = memory_file(&name, bytes) {
        use std::os::fd::AsRawFd;
        return Ok(Staged {
            path: PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd())),
            keep: Some(file),
            cleanup: None,
        });
    }
    private_folder(original, &name, bytes)
}

#[cfg(target_os = "linux")]
fn memory_file(name: &str, bytes: &[u8]) -> std::io::Result<std::fs::File> {
    use std::io::Write;
    use std::os::fd::FromRawFd;
    let label = std::ffi::CString::new(format!("propensity-plugin:{name}"))
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `label` is a NUL-terminated string that outlives the call.
    let fd =
        unsafe { libc::memfd_create(label.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nothing else.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.write_all(bytes)?;
    let seals = libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on a file descriptor this function owns.
    if unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, seals) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file)
}

#[cfg(unix)]
fn private_folder(original: &Path, name: &str, bytes: &[u8]) -> Result<Staged, PluginError> {
    use std::io::Write;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::OpenOptionsExt;
    let base = std::env::temp_dir();
    let fail = |e: std::io::Error| {
        PluginError::new(format!(
            "cannot stage plugin library `{}` in {}: {e}",
            original.display(),
            base.display()
        ))
        .hint("set TMPDIR to a writable folder")
    };
    let template = base.join("propensity-plugin-XXXXXX");
    let mut template = std::ffi::CString::new(template.as_os_str().as_bytes())
        .map_err(|e| fail(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?
        .into_bytes_with_nul();
    // SAFETY: `template` is a writable NUL-terminated buffer ending in XXXXXX, as mkdtemp needs.
    let made = unsafe { libc::mkdtemp(template.as_mut_ptr().cast()) };
    if made.is_null() {
        return Err(fail(std::io::Error::last_os_error()));
    }
    template.pop();
    let dir = PathBuf::from(std::ffi::OsStr::from_bytes(&template));
    let path = dir.join(name);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o500)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .and_then(|mut f| f.write_all(bytes));
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(fail(e));
    }
    Ok(Staged {
        path,
        keep: None,
        cleanup: Some(dir),
    })
}

#[cfg(not(unix))]
fn private_folder(original: &Path, name: &str, bytes: &[u8]) -> Result<Staged, PluginError> {
    let dir = std::env::temp_dir().join(format!(
        "propensity-plugin-{}-{}",
        std::process::id(),
        sha256_hex(bytes)
    ));
    let fail = |e: std::io::Error| {
        PluginError::new(format!(
            "cannot stage plugin library `{}` in {}: {e}",
            original.display(),
            dir.display()
        ))
    };
    std::fs::create_dir(&dir).map_err(fail)?;
    let path = dir.join(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, bytes))
        .map_err(fail)?;
    Ok(Staged {
        path,
        keep: None,
        cleanup: None,
    })
}

/// Loads a library, resolving every symbol now (a missing one fails the load, not a later
/// call in the middle of a run). Never unloaded: the plugin's code releases the arrays and
/// messages it made.
fn open(path: &Path) -> Result<&'static libloading::Library, libloading::Error> {
    // SAFETY: loading a library runs its initialisers (Rust's std and the plugin's
    // dependencies have some): it runs code the user chose to trust, by the job's sha256
    // pin or by putting the library in a plugin directory.
    #[cfg(unix)]
    let lib: libloading::Library = unsafe {
        libloading::os::unix::Library::open(
            Some(path),
            libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_LOCAL,
        )
    }?
    .into();
    // SAFETY: as above.
    #[cfg(not(unix))]
    let lib = unsafe { libloading::Library::new(path) }?;
    Ok(Box::leak(Box::new(lib)))
}

/// Reads an entry point's outcome and gives its message back to the plugin.
fn call(
    who: &str,
    out: CallResult,
    free: unsafe extern "C" fn(abi::Bytes),
) -> Result<Vec<u8>, PluginError> {
    let bytes = if out.message.len == 0 || out.message.ptr.is_null() {
        Vec::new()
    } else {
        // SAFETY: the plugin made `len` initialised bytes at `ptr`; they are copied before
        // being handed back to `free`.
        unsafe { std::slice::from_raw_parts(out.message.ptr, out.message.len) }.to_vec()
    };
    // SAFETY: the message came from this plugin and is released once.
    unsafe { free(out.message) };
    match out.status {
        abi::STATUS_OK => Ok(bytes),
        abi::STATUS_ERROR => Err(PluginError::new(format!(
            "{who}: {}",
            String::from_utf8_lossy(&bytes)
        ))),
        abi::STATUS_PANIC => Err(PluginError::new(format!(
            "{who} panicked: {}",
            String::from_utf8_lossy(&bytes)
        ))
        .hint("this is a bug in the plugin")),
        s => Err(PluginError::new(format!("{who}: unknown status {s}"))),
    }
}

/// A library found in the plugin directories, loaded or not.
#[derive(Debug)]
pub struct Found {
    /// The file.
    pub path: PathBuf,
    /// The plugin, or why it could not be loaded.
    pub plugin: Result<Plugin, PluginError>,
}

/// Every library in `dirs` (files named like a shared library), loaded and described. A
/// library whose name is found in an earlier folder is shadowed and listed once.
pub fn discover(dirs: &[PathBuf]) -> Vec<Found> {
    let mut out = Vec::new();
    let mut names = Vec::new();
    for d in dirs {
        let Ok(entries) = std::fs::read_dir(d) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && p.file_name().is_some_and(|n| {
                        let n = n.to_string_lossy();
                        n.starts_with(std::env::consts::DLL_PREFIX)
                            && n.ends_with(std::env::consts::DLL_SUFFIX)
                    })
            })
            .collect();
        files.sort();
        for path in files {
            let name = path.file_name().map(|n| n.to_os_string());
            if names.contains(&name) {
                continue;
            }
            names.push(name);
            let plugin = Plugin::load(&path, None);
            out.push(Found { path, plugin });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_looked_up_in_order_and_a_path_taken_as_written() {
        let dir =
            std::env::temp_dir().join(format!("propensity-plugin-host-{}", std::process::id()));
        let (a, b) = (dir.join("a"), dir.join("b"));
        std::fs::create_dir_all(&a).expect("dir");
        std::fs::create_dir_all(&b).expect("dir");
        std::fs::write(b.join(library_file_name("goal")), b"x").expect("write");
        let found = locate("goal", &dir, &[a.clone(), b.clone()]).expect("found");
        assert_eq!(found, b.join(library_file_name("goal")));
        let e = locate("other", &dir, &[a.clone(), b]).expect_err("missing");
        assert!(e.message.contains("plugin `other` not found"), "{e}");
        assert!(e.message.contains(&a.display().to_string()), "{e}");
        let rel = format!("b/{}", library_file_name("goal"));
        assert!(locate(&rel, &dir, &[]).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_pin_mismatch_is_refused_before_loading() {
        let dir =
            std::env::temp_dir().join(format!("propensity-plugin-pin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        // Not a library at all: loading it would fail differently, so the message proves the
        // hash was checked first.
        let f = dir.join(library_file_name("fake"));
        std::fs::write(&f, b"not a library").expect("write");
        let e = Plugin::load(&f, Some(&"0".repeat(64))).expect_err("pin");
        assert!(e.message.contains("was not loaded"), "{e}");
        assert!(e.message.contains(&sha256_file(&f).expect("hash")), "{e}");
        let e = Plugin::load(&f, None).expect_err("not a library");
        assert!(e.message.contains("cannot load plugin library"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
