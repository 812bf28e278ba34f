//! Small helpers shared by every layer.

pub mod codec;
pub mod fsutil;
pub mod signals;
pub mod time;

/// Gives freed heap memory back to the system (glibc keeps it otherwise): called after start-up
/// and after sessions, whose peaks (a 10,000-parameter answer) are short.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory held by the allocator.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}
