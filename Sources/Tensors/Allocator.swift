import CShims
#if canImport(Glibc)
import Glibc
#endif

/// Fixes glibc's mmap threshold at its starting value (128 KiB), which also stops it moving. glibc
/// raises the threshold to the size of any mapped block it frees (up to 32 MiB), after which blocks up
/// to that size come from the heap and stay resident once freed: a checkpoint's assembly on tensor-
/// parallel rank 0 (the wide model at tp 4: a 24 MiB shard received, freed, then allocated again for
/// each state buffer) grew its peak RSS by 25-49 MiB past what it holds at once (506 MiB with the
/// threshold fixed, 531 after one checkpoint and 555 after two without). Large buffers are mapped and
/// unmapped as they come and go; the one-process recipe ran at the same speed either way (53.9-54.9 ms
/// against 54.5). The trim threshold is fixed at its starting value (128 KiB) too, and the heap trimmed
/// once: in a process that freed a large mapped block before this call (a test runner, after other
/// tests), glibc had raised it to twice that block's size, and the heap's free top, that large, served
/// the next large buffers instead of a mapping (AllocatorTests failed so, three runs in a row, while
/// passing alone). A threshold the user set (MALLOC_MMAP_THRESHOLD_) is left as it is.
public func fixAllocatorThresholds() {
    guard getenv("MALLOC_MMAP_THRESHOLD_") == nil else { return }
    _ = ddp_fix_allocator_thresholds(128 * 1024)
}

/// Bytes malloc holds in blocks it mapped one by one (glibc's own count, `mallinfo2().hblkhd`): such a
/// block goes back to the kernel when freed, where one taken from the heap stays resident.
public func allocatorMappedBytes() -> Int {
    Int(ddp_mapped_allocation_bytes())
}

/// Bytes free inside malloc's arenas, their tops included (`mallinfo2().fordblks`): a block larger than
/// this cannot come from them.
public func allocatorFreeBytes() -> Int {
    Int(ddp_free_allocation_bytes())
}
