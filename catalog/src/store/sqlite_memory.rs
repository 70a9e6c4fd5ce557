//! SQLite takes its memory from the process's allocator (mimalloc in the server binary)
//! instead of the C library's `malloc`.
//!
//! sqlx runs each SQLite connection on a thread of its own, and glibc's `malloc` gives each
//! such thread an arena that keeps what it frees: after 200,000 members approved, the
//! arenas held 82 MiB while SQLite used 27 MB (`malloc_trim` gave 56 MiB back). mimalloc
//! returns freed pages to the system, so the server's resident memory follows what SQLite
//! holds, which the soft heap limit set on each connection bounds.

use std::alloc::{Layout, alloc, dealloc, realloc};
use std::ffi::{c_int, c_void};
use std::ptr::null_mut;
use std::sync::OnceLock;

use libsqlite3_sys as ffi;

/// Each block starts with its size (SQLite asks for it back through `xSize`); 8 bytes keep
/// the alignment SQLite needs.
const HEADER: usize = 8;

fn layout(size: usize) -> Option<Layout> {
    Layout::from_size_align(size.checked_add(HEADER)?, HEADER).ok()
}

/// Writes the size header at `base` and returns the pointer SQLite sees.
///
/// # Safety
/// `base` is a live block of at least `size + HEADER` bytes, aligned to `HEADER`.
unsafe fn open(base: *mut u8, size: usize) -> *mut c_void {
    // SAFETY: the caller's block is large and aligned enough for the header and the rest.
    unsafe {
        base.cast::<usize>().write(size);
        base.add(HEADER).cast()
    }
}

/// The block under a pointer `open` returned, and the size SQLite asked for.
///
/// # Safety
/// `p` came from `open` and was not freed since.
unsafe fn block(p: *mut c_void) -> (*mut u8, usize) {
    // SAFETY: `open` wrote the size `HEADER` bytes before `p`, in the same block.
    unsafe {
        let base = p.cast::<u8>().sub(HEADER);
        (base, base.cast::<usize>().read())
    }
}

unsafe extern "C" fn x_malloc(size: c_int) -> *mut c_void {
    let Some(layout) = usize::try_from(size).ok().and_then(layout) else {
        return null_mut();
    };
    // SAFETY: the layout's size is at least HEADER, never zero; the block is checked.
    unsafe {
        let base = alloc(layout);
        if base.is_null() { null_mut() } else { open(base, layout.size() - HEADER) }
    }
}

unsafe extern "C" fn x_free(p: *mut c_void) {
    if p.is_null() {
        return;
    }
    // SAFETY: SQLite frees only what `x_malloc` or `x_realloc` returned, once, and the
    // layout is the one it was allocated with.
    unsafe {
        let (base, size) = block(p);
        dealloc(base, Layout::from_size_align_unchecked(size + HEADER, HEADER));
    }
}

unsafe extern "C" fn x_realloc(p: *mut c_void, size: c_int) -> *mut c_void {
    let Some(new) = usize::try_from(size).ok().and_then(layout) else {
        return null_mut();
    };
    // SAFETY: as for `x_free`; on failure the old block is left as it was, as SQLite expects.
    unsafe {
        let (base, old) = block(p);
        let moved = realloc(base, Layout::from_size_align_unchecked(old + HEADER, HEADER), new.size());
        if moved.is_null() { null_mut() } else { open(moved, new.size() - HEADER) }
    }
}

unsafe extern "C" fn x_size(p: *mut c_void) -> c_int {
    if p.is_null() {
        return 0;
    }
    // SAFETY: as for `x_free`; sizes came from a c_int.
    unsafe { block(p).1 as c_int }
}

unsafe extern "C" fn x_roundup(size: c_int) -> c_int {
    size.saturating_add(7) & !7
}

unsafe extern "C" fn x_init(_: *mut c_void) -> c_int {
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_shutdown(_: *mut c_void) {}

/// Routes SQLite's allocations to the process's allocator, and says whether they go there.
/// It must run before SQLite's first use in the process; if SQLite was already in use, SQLite
/// keeps the C library's allocator and this says so once.
pub(super) fn use_process_allocator() -> bool {
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    *INSTALLED.get_or_init(|| {
        let methods = ffi::sqlite3_mem_methods {
            xMalloc: Some(x_malloc),
            xFree: Some(x_free),
            xRealloc: Some(x_realloc),
            xSize: Some(x_size),
            xRoundup: Some(x_roundup),
            xInit: Some(x_init),
            xShutdown: Some(x_shutdown),
            pAppData: null_mut(),
        };
        // SAFETY: SQLite copies the methods; no other thread uses SQLite yet (the catalog is
        // SQLite's only user and waits here), which `sqlite3_config` requires.
        let rc = unsafe { ffi::sqlite3_config(ffi::SQLITE_CONFIG_MALLOC, &methods as *const ffi::sqlite3_mem_methods) };
        if rc != ffi::SQLITE_OK {
            tracing::warn!(rc, "SQLite was in use before the catalog opened: it keeps the C library's allocator");
        }
        rc == ffi::SQLITE_OK
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_keep_their_size_through_growth_and_shrinking() {
        // SAFETY: each pointer is used only as SQLite would: written within its size, resized,
        // then freed once.
        unsafe {
            let p = x_malloc(100);
            assert!(!p.is_null());
            assert_eq!(x_size(p), 100);
            p.cast::<u8>().write_bytes(0xab, 100);
            let p = x_realloc(p, 10_000);
            assert_eq!(x_size(p), 10_000);
            assert!(std::slice::from_raw_parts(p.cast::<u8>(), 100).iter().all(|b| *b == 0xab));
            let p = x_realloc(p, 16);
            assert_eq!(x_size(p), 16);
            assert_eq!(p as usize % 8, 0);
            x_free(p);
            x_free(null_mut());
            assert!(x_malloc(-1).is_null());
            assert_eq!(x_roundup(13), 16);
        }
    }
}
