//! A structural check of an ELF shared library, made before the dynamic loader maps it.
//!
//! The dynamic loader trusts a library's headers: it maps every loadable segment
//! straight from the file, so a segment that ends past the end of a truncated file
//! becomes a SIGBUS in the host the moment the loader touches it. This module reads
//! only the headers (written from the System V ABI's ELF chapter) and refuses a file
//! whose header tables, segments or sections do not fit inside it, or that was built
//! for another platform. Files without the ELF magic number are left to the loader,
//! which refuses them by reading (never mapping) their first bytes.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::loader::LoadError;

const MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];
const EI_CLASS: usize = 4;
const EI_DATA: usize = 5;
const EI_VERSION: usize = 6;
const ELFCLASS32: u8 = 1;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const ELFDATA2MSB: u8 = 2;
const EV_CURRENT: u64 = 1;
const ET_DYN: u64 = 3;
const PT_LOAD: u64 = 1;
const PT_DYNAMIC: u64 = 2;
const SHT_NULL: u64 = 0;
const SHT_NOBITS: u64 = 8;
/// `e_phnum` value meaning "the real count is in section 0's `sh_info`".
const PN_XNUM: u64 = 0xffff;

/// Where the fields of the headers sit, for one ELF class: (offset, width) in bytes.
struct Layout {
    bits: u8,
    ehdr_size: u64,
    phdr_size: u64,
    shdr_size: u64,
    e_phoff: (usize, usize),
    e_shoff: (usize, usize),
    e_phentsize: usize,
    e_phnum: usize,
    e_shentsize: usize,
    e_shnum: usize,
    p_offset: (usize, usize),
    p_filesz: (usize, usize),
    sh_offset: (usize, usize),
    sh_size: (usize, usize),
    sh_info: usize,
}

const ELF32: Layout = Layout {
    bits: 32,
    ehdr_size: 52,
    phdr_size: 32,
    shdr_size: 40,
    e_phoff: (28, 4),
    e_shoff: (32, 4),
    e_phentsize: 42,
    e_phnum: 44,
    e_shentsize: 46,
    e_shnum: 48,
    p_offset: (4, 4),
    p_filesz: (16, 4),
    sh_offset: (16, 4),
    sh_size: (20, 4),
    sh_info: 28,
};

const ELF64: Layout = Layout {
    bits: 64,
    ehdr_size: 64,
    phdr_size: 56,
    shdr_size: 64,
    e_phoff: (32, 8),
    e_shoff: (40, 8),
    e_phentsize: 54,
    e_phnum: 56,
    e_shentsize: 58,
    e_shnum: 60,
    p_offset: (8, 8),
    p_filesz: (32, 8),
    sh_offset: (24, 8),
    sh_size: (32, 8),
    sh_info: 44,
};

/// What the headers say the file is, when nothing is wrong with them.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    /// No ELF magic number: the loader gives its own verdict.
    NotElf,
    SharedLibrary,
}

enum Fault {
    Io(std::io::Error),
    Verdict(LoadError),
}

impl From<std::io::Error> for Fault {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<LoadError> for Fault {
    fn from(e: LoadError) -> Self {
        Self::Verdict(e)
    }
}

/// Checks the library at `path` before the dynamic loader may map it.
pub(crate) fn check(path: &Path) -> Result<Shape, LoadError> {
    // A file that cannot be opened is left to the loader, which reports it as today.
    let Ok(mut file) = File::open(path) else {
        return Ok(Shape::NotElf);
    };
    let unreadable = |e: std::io::Error| {
        LoadError::NotALibrary(format!("{}: cannot read it: {e}", path.display()))
    };
    let size = file.metadata().map_err(unreadable)?.len();
    match inspect(&mut file, size) {
        Ok(shape) => Ok(shape),
        Err(Fault::Verdict(e)) => Err(e),
        Err(Fault::Io(e)) => Err(unreadable(e)),
    }
}

/// The check itself, over any seekable image of `size` bytes.
fn inspect<R: Read + Seek>(image: &mut R, size: u64) -> Result<Shape, Fault> {
    let ident = read_at(image, 0, size.min(ELF64.ehdr_size))?;
    if ident.get(..4) != Some(&MAGIC[..]) {
        return Ok(Shape::NotElf);
    }
    let layout = match ident.get(EI_CLASS) {
        Some(&ELFCLASS32) => &ELF32,
        Some(&ELFCLASS64) => &ELF64,
        Some(other) => return Err(damaged(format!("its ELF class {other} is unknown")).into()),
        None => return Err(truncated("ELF identification", 16, size)),
    };
    let big = match ident.get(EI_DATA) {
        Some(&ELFDATA2LSB) => false,
        Some(&ELFDATA2MSB) => true,
        Some(other) => {
            return Err(damaged(format!("its ELF data encoding {other} is unknown")).into())
        }
        None => return Err(truncated("ELF header", layout.ehdr_size, size)),
    };
    if size < layout.ehdr_size {
        return Err(truncated("ELF header", layout.ehdr_size, size));
    }
    let header = Fields { bytes: &ident, big };
    check_platform(&header, layout, big)?;
    if header.uint(EI_VERSION, 1) != EV_CURRENT || header.uint(20, 4) != EV_CURRENT {
        return Err(damaged("its ELF version is unknown".into()).into());
    }

    let shoff = header.uint(layout.e_shoff.0, layout.e_shoff.1);
    let shentsize = header.uint(layout.e_shentsize, 2);
    if shoff != 0 && shentsize < layout.shdr_size {
        return Err(damaged(format!(
            "its section headers are {shentsize} bytes each, fewer than the {} an ELF{} section header needs",
            layout.shdr_size, layout.bits
        ))
        .into());
    }
    let e_phnum = header.uint(layout.e_phnum, 2);
    // Section 0 holds the real program header count when it does not fit e_phnum.
    let phnum = match (e_phnum, shoff) {
        (PN_XNUM, 0) => {
            return Err(damaged(
                "its program header count points at a section header table it does not have".into(),
            )
            .into())
        }
        (PN_XNUM, _) => section0(image, layout, big, shoff, shentsize, size)?.info,
        (n, _) => n,
    };
    let phoff = header.uint(layout.e_phoff.0, layout.e_phoff.1);
    let phentsize = header.uint(layout.e_phentsize, 2);
    // The loader reads program headers as fixed-size records and refuses any other size.
    if phentsize != layout.phdr_size {
        return Err(damaged(format!(
            "its program headers are {phentsize} bytes each instead of the {} of ELF{}",
            layout.phdr_size, layout.bits
        ))
        .into());
    }
    let table = table_bytes(image, "program header table", phoff, phnum, phentsize, size)?;
    let mut has_dynamic = false;
    for (i, entry) in table.chunks_exact(to_usize(phentsize)?).enumerate() {
        let entry = Fields { bytes: entry, big };
        let kind = entry.uint(0, 4);
        has_dynamic |= kind == PT_DYNAMIC;
        let offset = entry.uint(layout.p_offset.0, layout.p_offset.1);
        let filesz = entry.uint(layout.p_filesz.0, layout.p_filesz.1);
        if filesz > 0 {
            extent(&program_header_name(i, kind), offset, filesz, size)?;
        }
    }
    if !has_dynamic {
        return Err(LoadError::NoDynamicSection.into());
    }

    if shoff != 0 {
        // Section 0 holds the real count when it does not fit e_shnum.
        let shnum = match header.uint(layout.e_shnum, 2) {
            0 => section0(image, layout, big, shoff, shentsize, size)?.size,
            n => n,
        };
        let table = table_bytes(image, "section header table", shoff, shnum, shentsize, size)?;
        for (i, entry) in table.chunks_exact(to_usize(shentsize)?).enumerate() {
            let entry = Fields { bytes: entry, big };
            let kind = entry.uint(4, 4);
            let offset = entry.uint(layout.sh_offset.0, layout.sh_offset.1);
            let length = entry.uint(layout.sh_size.0, layout.sh_size.1);
            // A NOBITS section (.bss) occupies no bytes of the file; a NULL one has no extent.
            if kind != SHT_NULL && kind != SHT_NOBITS && length > 0 {
                extent(&format!("section {i}"), offset, length, size)?;
            }
        }
    }
    Ok(Shape::SharedLibrary)
}

/// The fields of section 0 that extended numbering uses.
struct Section0 {
    size: u64,
    info: u64,
}

fn section0<R: Read + Seek>(
    image: &mut R,
    layout: &Layout,
    big: bool,
    shoff: u64,
    shentsize: u64,
    size: u64,
) -> Result<Section0, Fault> {
    let end = extent("section header table", shoff, shentsize, size)?;
    let bytes = read_at(image, shoff, end - shoff)?;
    let fields = Fields { bytes: &bytes, big };
    Ok(Section0 {
        size: fields.uint(layout.sh_size.0, layout.sh_size.1),
        info: fields.uint(layout.sh_info, 4),
    })
}

/// The ELF type, machine, class and byte order must be this host's.
fn check_platform(header: &Fields<'_>, layout: &Layout, big: bool) -> Result<(), LoadError> {
    let kind = header.uint(16, 2);
    if kind != ET_DYN {
        return Err(LoadError::NotASharedLibrary {
            kind: type_name(kind),
        });
    }
    let machine = header.uint(18, 2);
    if let Some(host) = host_machine() {
        if machine != host {
            return Err(LoadError::WrongArchitecture {
                library: machine_name(machine),
                host: std::env::consts::ARCH.to_owned(),
            });
        }
    }
    let host_bits = if cfg!(target_pointer_width = "64") {
        64
    } else {
        32
    };
    if layout.bits != host_bits {
        return Err(LoadError::WrongWordSize {
            library_bits: layout.bits,
            host_bits,
        });
    }
    let host_big = cfg!(target_endian = "big");
    if big != host_big {
        let name = |big: bool| if big { "big-endian" } else { "little-endian" };
        return Err(LoadError::WrongByteOrder {
            library: name(big).to_owned(),
            host: name(host_big).to_owned(),
        });
    }
    Ok(())
}

/// Reads a table of `count` entries of `entry_size` bytes at `offset`, once it is
/// known to lie inside the file (so its size is bounded by the file's).
fn table_bytes<R: Read + Seek>(
    image: &mut R,
    part: &str,
    offset: u64,
    count: u64,
    entry_size: u64,
    size: u64,
) -> Result<Vec<u8>, Fault> {
    let length = count.checked_mul(entry_size).ok_or_else(|| {
        damaged(format!(
            "its {part} claims {count} entries of {entry_size} bytes, more than any file holds"
        ))
    })?;
    let end = extent(part, offset, length, size)?;
    Ok(read_at(image, offset, end - offset)?)
}

/// The end of `length` bytes at `offset`, when they lie inside a file of `size` bytes.
fn extent(part: &str, offset: u64, length: u64, size: u64) -> Result<u64, LoadError> {
    let end = offset.checked_add(length).ok_or_else(|| {
        damaged(format!(
            "its {part} claims {length} bytes at offset {offset}, beyond the end of any file"
        ))
    })?;
    if end > size {
        return Err(LoadError::Truncated {
            part: part.to_owned(),
            end,
            size,
        });
    }
    Ok(end)
}

fn truncated(part: &str, end: u64, size: u64) -> Fault {
    Fault::Verdict(LoadError::Truncated {
        part: part.to_owned(),
        end,
        size,
    })
}

fn damaged(detail: String) -> LoadError {
    LoadError::Damaged(detail)
}

fn to_usize(n: u64) -> Result<usize, Fault> {
    usize::try_from(n)
        .map_err(|_| damaged(format!("its header entry size {n} is too large")).into())
}

fn read_at<R: Read + Seek>(image: &mut R, offset: u64, length: u64) -> std::io::Result<Vec<u8>> {
    let length = usize::try_from(length)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::OutOfMemory, "table too large"))?;
    image.seek(SeekFrom::Start(offset))?;
    let mut bytes = vec![0; length];
    image.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// Unsigned fields of one header, in the file's byte order.
struct Fields<'a> {
    bytes: &'a [u8],
    big: bool,
}

impl Fields<'_> {
    /// The field of `width` bytes at `at`; every caller reads within a record it has
    /// read whole, so a short record (impossible) reads as 0 rather than panicking.
    fn uint(&self, at: usize, width: usize) -> u64 {
        let Some(bytes) = self.bytes.get(at..at + width) else {
            return 0;
        };
        let push = |value: u64, byte: &u8| (value << 8) | u64::from(*byte);
        if self.big {
            bytes.iter().fold(0, push)
        } else {
            bytes.iter().rev().fold(0, push)
        }
    }
}

/// `e_machine` values of the architectures Rust names in `std::env::consts::ARCH`.
const MACHINES: &[(&str, u64)] = &[
    ("x86", 3),
    ("mips", 8),
    ("mips64", 8),
    ("powerpc", 20),
    ("powerpc64", 21),
    ("s390x", 22),
    ("arm", 40),
    ("sparc64", 43),
    ("x86_64", 62),
    ("aarch64", 183),
    ("riscv32", 243),
    ("riscv64", 243),
    ("loongarch64", 258),
];

/// This host's `e_machine`, when known (an unknown architecture skips that check).
fn host_machine() -> Option<u64> {
    MACHINES
        .iter()
        .find(|(arch, _)| *arch == std::env::consts::ARCH)
        .map(|(_, machine)| *machine)
}

fn machine_name(machine: u64) -> String {
    match MACHINES.iter().find(|(_, m)| *m == machine) {
        Some((arch, _)) => (*arch).to_owned(),
        None => format!("ELF machine {machine}"),
    }
}

fn type_name(kind: u64) -> String {
    match kind {
        0 => "an ELF file of no type".to_owned(),
        1 => "a relocatable object file (.o)".to_owned(),
        2 => "an executable program".to_owned(),
        4 => "a core dump".to_owned(),
        n => format!("an ELF file of type {n}"),
    }
}

fn program_header_name(index: usize, kind: u64) -> String {
    match kind {
        PT_LOAD => format!("program header {index} (PT_LOAD)"),
        PT_DYNAMIC => format!("program header {index} (PT_DYNAMIC)"),
        _ => format!("program header {index}"),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    fn inspect_bytes(bytes: &[u8]) -> Result<Shape, LoadError> {
        match inspect(&mut Cursor::new(bytes), bytes.len() as u64) {
            Ok(shape) => Ok(shape),
            Err(Fault::Verdict(e)) => Err(e),
            Err(Fault::Io(e)) => panic!("reading from memory failed: {e}"),
        }
    }

    /// A real shared library this test process has mapped (the C library, usually).
    fn real_library() -> Vec<u8> {
        let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
        let path = maps
            .lines()
            .filter_map(|line| line.split_whitespace().nth(5))
            .find(|p| p.starts_with('/') && p.contains(".so"))
            .expect("a mapped shared library");
        std::fs::read(path).expect("read the library")
    }

    fn put(bytes: &mut [u8], at: usize, width: usize, value: u64, big: bool) {
        for i in 0..width {
            let shift = if big { 8 * (width - 1 - i) } else { 8 * i };
            bytes[at + i] = (value >> shift) as u8;
        }
    }

    const HEADER: usize = 64;
    const PHDRS: usize = HEADER;
    const SHDRS: usize = PHDRS + 2 * 56;
    const LEN: usize = SHDRS + 3 * 64;

    /// A minimal ELF64 shared library for this host, laid out by hand from the
    /// specification: the ELF header, a PT_LOAD over the whole file and a PT_DYNAMIC,
    /// then three sections (NULL, PROGBITS over the program headers, a huge NOBITS).
    fn minimal(big: bool) -> Vec<u8> {
        let mut b = vec![0u8; LEN];
        b[..4].copy_from_slice(&MAGIC);
        b[EI_CLASS] = ELFCLASS64;
        b[EI_DATA] = if big { ELFDATA2MSB } else { ELFDATA2LSB };
        b[EI_VERSION] = 1;
        put(&mut b, 16, 2, ET_DYN, big);
        put(&mut b, 18, 2, host_machine().unwrap_or(62), big);
        put(&mut b, 20, 4, 1, big);
        put(&mut b, 32, 8, PHDRS as u64, big);
        put(&mut b, 40, 8, SHDRS as u64, big);
        put(&mut b, 52, 2, 64, big);
        put(&mut b, 54, 2, 56, big);
        put(&mut b, 56, 2, 2, big);
        put(&mut b, 58, 2, 64, big);
        put(&mut b, 60, 2, 3, big);
        // PT_LOAD: the whole file.
        put(&mut b, PHDRS, 4, PT_LOAD, big);
        put(&mut b, PHDRS + 32, 8, LEN as u64, big);
        put(&mut b, PHDRS + 40, 8, LEN as u64, big);
        // PT_DYNAMIC: inside the section header table, which will do for its bytes.
        put(&mut b, PHDRS + 56, 4, PT_DYNAMIC, big);
        put(&mut b, PHDRS + 56 + 8, 8, SHDRS as u64, big);
        put(&mut b, PHDRS + 56 + 32, 8, 16, big);
        // Section 1: PROGBITS over the program headers.
        put(&mut b, SHDRS + 64 + 4, 4, 1, big);
        put(&mut b, SHDRS + 64 + 24, 8, PHDRS as u64, big);
        put(&mut b, SHDRS + 64 + 32, 8, 112, big);
        // Section 2: NOBITS, far larger than the file, which is fine.
        put(&mut b, SHDRS + 128 + 4, 4, SHT_NOBITS, big);
        put(&mut b, SHDRS + 128 + 24, 8, LEN as u64, big);
        put(&mut b, SHDRS + 128 + 32, 8, 1 << 40, big);
        b
    }

    fn host_is_big() -> bool {
        cfg!(target_endian = "big")
    }

    #[test]
    fn a_real_shared_library_passes() {
        assert_eq!(inspect_bytes(&real_library()), Ok(Shape::SharedLibrary));
    }

    #[test]
    fn this_test_program_is_a_shared_object_when_pie_and_refused_otherwise() {
        let exe = std::fs::read("/proc/self/exe").expect("read the test program");
        let e_type = Fields {
            bytes: &exe,
            big: host_is_big(),
        }
        .uint(16, 2);
        let verdict = inspect_bytes(&exe);
        if e_type == ET_DYN {
            assert_eq!(verdict, Ok(Shape::SharedLibrary));
        } else {
            assert!(
                matches!(verdict, Err(LoadError::NotASharedLibrary { .. })),
                "{verdict:?}"
            );
        }
    }

    #[test]
    fn a_minimal_library_passes_and_its_nobits_section_takes_no_file_bytes() {
        assert_eq!(
            inspect_bytes(&minimal(host_is_big())),
            Ok(Shape::SharedLibrary)
        );
    }

    #[test]
    fn a_truncated_real_library_is_refused_at_every_length() {
        let library = real_library();
        let len = library.len();
        for cut in [4, 5, 16, 63, 64, 100, 4096, len / 2, len - 1] {
            let verdict = inspect_bytes(&library[..cut]);
            assert!(
                matches!(&verdict, Err(LoadError::Truncated { size, .. }) if *size == cut as u64),
                "cut at {cut}: {verdict:?}"
            );
        }
    }

    #[test]
    fn every_prefix_of_a_minimal_library_is_refused() {
        let library = minimal(host_is_big());
        for cut in 4..library.len() {
            let verdict = inspect_bytes(&library[..cut]);
            assert!(
                matches!(verdict, Err(LoadError::Truncated { .. })),
                "cut at {cut}: {verdict:?}"
            );
        }
        for cut in 0..4 {
            assert_eq!(inspect_bytes(&library[..cut]), Ok(Shape::NotElf));
        }
    }

    #[test]
    fn the_truncated_verdict_says_where_and_what_to_do() {
        let mut library = minimal(host_is_big());
        library.truncate(LEN - 1);
        let verdict = inspect_bytes(&library).expect_err("truncated");
        assert_eq!(
            verdict.to_string(),
            format!(
                "the library file is truncated or damaged: its program header 0 (PT_LOAD) ends at byte {LEN} but the file has {} bytes; copy the plugin again",
                LEN - 1
            )
        );
        let big = LoadError::Truncated {
            part: "program header 3 (PT_LOAD)".into(),
            end: 1_234_567,
            size: 4096,
        };
        assert_eq!(
            big.to_string(),
            "the library file is truncated or damaged: its program header 3 (PT_LOAD) ends at byte 1,234,567 but the file has 4,096 bytes; copy the plugin again"
        );
    }

    #[test]
    fn overflowing_offsets_and_sizes_are_verdicts_not_panics() {
        let big = host_is_big();
        let cases: [(usize, usize, u64); 7] = [
            (32, 8, u64::MAX - 8),          // e_phoff
            (40, 8, u64::MAX - 8),          // e_shoff
            (PHDRS + 8, 8, u64::MAX),       // p_offset of the PT_LOAD
            (PHDRS + 32, 8, u64::MAX),      // p_filesz of the PT_LOAD
            (SHDRS + 64 + 24, 8, u64::MAX), // sh_offset of section 1
            (SHDRS + 64 + 32, 8, u64::MAX), // sh_size of section 1
            (SHDRS + 64 + 32, 8, 1 << 63),  // sh_size of section 1, no overflow
        ];
        for (at, width, value) in cases {
            let mut library = minimal(big);
            put(&mut library, at, width, value, big);
            let verdict = inspect_bytes(&library);
            assert!(
                matches!(
                    verdict,
                    Err(LoadError::Damaged(_) | LoadError::Truncated { .. })
                ),
                "field at {at} = {value}: {verdict:?}"
            );
        }
    }

    #[test]
    fn extended_counts_live_in_section_zero() {
        let big = host_is_big();
        // e_phnum = PN_XNUM: the count is section 0's sh_info.
        let mut library = minimal(big);
        put(&mut library, 56, 2, PN_XNUM, big);
        put(&mut library, SHDRS + 44, 4, 2, big);
        assert_eq!(inspect_bytes(&library), Ok(Shape::SharedLibrary));
        // e_shnum = 0: the count is section 0's sh_size; a huge one is a verdict.
        put(&mut library, 60, 2, 0, big);
        put(&mut library, SHDRS + 32, 8, 3, big);
        assert_eq!(inspect_bytes(&library), Ok(Shape::SharedLibrary));
        put(&mut library, SHDRS + 32, 8, u64::MAX, big);
        assert!(matches!(
            inspect_bytes(&library),
            Err(LoadError::Damaged(_))
        ));
        // PN_XNUM without a section header table.
        let mut library = minimal(big);
        put(&mut library, 56, 2, PN_XNUM, big);
        put(&mut library, 40, 8, 0, big);
        assert!(matches!(
            inspect_bytes(&library),
            Err(LoadError::Damaged(_))
        ));
    }

    #[test]
    fn a_library_for_another_machine_is_refused_with_both_names() {
        let big = host_is_big();
        let mut library = minimal(big);
        let other = if host_machine() == Some(183) { 62 } else { 183 };
        put(&mut library, 18, 2, other, big);
        let verdict = inspect_bytes(&library).expect_err("wrong machine");
        assert_eq!(
            verdict,
            LoadError::WrongArchitecture {
                library: machine_name(other),
                host: std::env::consts::ARCH.into()
            }
        );
        put(&mut library, 18, 2, 9999, big);
        assert!(inspect_bytes(&library)
            .expect_err("unknown machine")
            .to_string()
            .starts_with("built for ELF machine 9999, but this host runs on "),);
    }

    #[test]
    fn an_executable_or_object_file_is_not_a_shared_library() {
        let big = host_is_big();
        for (kind, name) in [
            (2, "an executable program"),
            (1, "a relocatable object file (.o)"),
        ] {
            let mut library = minimal(big);
            put(&mut library, 16, 2, kind, big);
            assert_eq!(
                inspect_bytes(&library),
                Err(LoadError::NotASharedLibrary { kind: name.into() })
            );
        }
    }

    #[test]
    fn another_word_size_or_byte_order_is_refused() {
        let big = host_is_big();
        let mut library = minimal(big);
        library[EI_CLASS] = if cfg!(target_pointer_width = "64") {
            ELFCLASS32
        } else {
            ELFCLASS64
        };
        assert!(matches!(
            inspect_bytes(&library),
            Err(LoadError::WrongWordSize { .. })
        ));
        let verdict = inspect_bytes(&minimal(!big)).expect_err("other byte order");
        assert!(
            matches!(verdict, LoadError::WrongByteOrder { .. }),
            "{verdict:?}"
        );
    }

    #[test]
    fn a_library_without_a_dynamic_segment_is_refused() {
        let big = host_is_big();
        let mut library = minimal(big);
        put(&mut library, PHDRS + 56, 4, 4, big); // PT_NOTE
        assert_eq!(inspect_bytes(&library), Err(LoadError::NoDynamicSection));
    }

    #[test]
    fn a_wrong_program_header_size_or_unknown_class_is_damage() {
        let big = host_is_big();
        let mut library = minimal(big);
        put(&mut library, 54, 2, 55, big);
        assert!(matches!(
            inspect_bytes(&library),
            Err(LoadError::Damaged(_))
        ));
        let mut library = minimal(big);
        library[EI_CLASS] = 7;
        assert!(matches!(
            inspect_bytes(&library),
            Err(LoadError::Damaged(_))
        ));
    }

    #[test]
    fn files_without_the_magic_number_are_left_to_the_loader() {
        assert_eq!(inspect_bytes(b""), Ok(Shape::NotElf));
        assert_eq!(inspect_bytes(b"this is not a library"), Ok(Shape::NotElf));
        assert_eq!(inspect_bytes(b"\x7fEL"), Ok(Shape::NotElf));
    }

    /// Random damage to the headers of a valid library: any verdict, never a panic.
    #[test]
    fn random_damage_never_panics() {
        let big = host_is_big();
        let pristine = minimal(big);
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            // xorshift64: deterministic, so a failure reproduces.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut library = pristine.clone();
            for _ in 0..(next() % 6 + 1) {
                let at = (next() % LEN as u64) as usize;
                library[at] = next() as u8;
            }
            let cut = if next() % 4 == 0 {
                (next() % LEN as u64) as usize
            } else {
                LEN
            };
            let _ = inspect_bytes(&library[..cut]);
        }
    }

    #[test]
    fn a_file_on_disk_is_checked_through_its_path() {
        let dir = std::env::temp_dir().join(format!("plugin-api-elf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("libt.so");
        std::fs::write(&path, &real_library()[..4096]).expect("write");
        assert!(matches!(
            check(&path),
            Err(LoadError::Truncated { size: 4096, .. })
        ));
        assert_eq!(check(&dir.join("missing.so")), Ok(Shape::NotElf));
        assert!(
            matches!(check(&dir), Err(LoadError::NotALibrary(detail)) if detail.contains("cannot read it"))
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
