//! The process's allocator: mimalloc.
//!
//! Not part of the library (which forbids `unsafe`): the binary and the
//! memory benchmark include this file as their global allocator.
//!
//! Why mimalloc: fewer instructions per allocation than glibc's malloc on
//! the cache-hit path, and no per-thread arenas holding freed memory after
//! a cache fill (benches/RESULTS.md). Built without transparent huge pages
//! (`no_thp`), which would round the resident set up to 2 MiB pages.
//!
//! Why not the `mimalloc` crate's allocator: it sends every allocation
//! through mimalloc's aligned entry points, whose fast path covers only
//! blocks up to 1 KiB; larger ones (a request's boxed future, hyper's
//! buffers) took the slow path. Like the standard library's `System`
//! allocator, this uses the plain entry points whenever the alignment is
//! one malloc already guarantees.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The alignment every mimalloc block of at least this size has (its
/// `MI_MAX_ALIGN_SIZE`, as glibc's on 64-bit targets).
#[cfg(target_pointer_width = "64")]
const MALLOC_ALIGN: usize = 16;
#[cfg(not(target_pointer_width = "64"))]
const MALLOC_ALIGN: usize = 8;

/// mimalloc as a [`GlobalAlloc`].
pub struct MiMalloc;

fn plain(layout: &Layout, size: usize) -> bool {
    layout.align() <= MALLOC_ALIGN && layout.align() <= size
}

// SAFETY: every block comes from mimalloc and goes back to it (`mi_free`
// takes blocks from any of its entry points); the plain entry points are
// used only when their guaranteed alignment satisfies the layout.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let size = layout.size();
        // SAFETY: plain FFI calls; a null return is the allocation error.
        unsafe {
            if plain(&layout, size) {
                mi::mi_malloc(size).cast()
            } else {
                mi::mi_malloc_aligned(size, layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let size = layout.size();
        // SAFETY: as in `alloc`.
        unsafe {
            if plain(&layout, size) {
                mi::mi_zalloc(size).cast()
            } else {
                mi::mi_zalloc_aligned(size, layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator (the caller's contract).
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout`; the new
        // block keeps the layout's alignment.
        unsafe {
            if plain(&layout, new_size) {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}
