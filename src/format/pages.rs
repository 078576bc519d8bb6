//! Keep the resident set bounded while streaming through memory-mapped
//! inputs: pages already consumed are handed back to the kernel. They stay
//! in the page cache and are re-read from the file if touched again, so the
//! bytes seen never change; only the process's RSS shrinks.

/// Tell the kernel the whole pages inside `bytes` (a slice of a read-only
/// file mapping) will not be needed soon.
pub fn release(bytes: &[u8]) {
    #[cfg(unix)]
    {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let page = if page > 0 { page as usize } else { 4096 };
        let start = bytes.as_ptr() as usize;
        let end = start + bytes.len();
        let first = start.div_ceil(page) * page;
        let last = end / page * page;
        if last > first {
            // SAFETY: the range lies inside a live read-only file mapping
            // (whole pages within `bytes`); MADV_DONTNEED on such a mapping
            // only drops clean pages, which are re-read from the file on the
            // next access with the same contents.
            unsafe {
                libc::madvise(
                    first as *mut libc::c_void,
                    last - first,
                    libc::MADV_DONTNEED,
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = bytes;
}

/// Release `bytes` only if it lies entirely inside one of `maps` (so that
/// memory not backed by a file mapping is never touched).
pub fn release_within<'a>(maps: impl IntoIterator<Item = &'a [u8]>, bytes: &[u8]) {
    let (start, end) = (
        bytes.as_ptr() as usize,
        bytes.as_ptr() as usize + bytes.len(),
    );
    for m in maps {
        let (ms, me) = (m.as_ptr() as usize, m.as_ptr() as usize + m.len());
        if start >= ms && end <= me {
            release(bytes);
            return;
        }
    }
}

/// A memory-mapped container that can drop consumed pages from the
/// resident set (see [`crate::format::pages`]).
pub trait ReleasePages: Sync {
    /// Drop the whole pages inside `bytes` if they belong to this mapping.
    fn release(&self, bytes: &[u8]);
}

/// Ask the kernel to read the pages under `bytes` ahead (a hint: errors
/// are ignored).
pub fn will_need(bytes: &[u8]) {
    #[cfg(unix)]
    {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let page = if page > 0 { page as usize } else { 4096 };
        let start = bytes.as_ptr() as usize / page * page;
        let end = bytes.as_ptr() as usize + bytes.len();
        if end > start {
            // SAFETY: the range starts at the page holding `bytes[0]`, which
            // belongs to the same mapping as `bytes`; MADV_WILLNEED only
            // schedules reads and never changes memory contents.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_WILLNEED);
            }
        }
    }
    #[cfg(not(unix))]
    let _ = bytes;
}
