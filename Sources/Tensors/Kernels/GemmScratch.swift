#if canImport(Glibc)
import Glibc
#endif

/// GEMM's pack buffers, growing blocks per thread (slot 0 packs, slot 1 holds a transposed C while
/// the inner call packs into slot 0): a call used to allocate and free up to 2 MiB
/// (B's slab), which glibc may serve by mmap, i.e. page faults on every call. Threads never share one
/// (ranks time layouts on several threads at once); the block is freed when its thread exits.
final class GemmScratch {
    private var blocks: [(floats: UnsafeMutableRawPointer, capacity: Int)] = []

    deinit { for block in blocks { block.floats.deallocate() } }

    private static let key: pthread_key_t = {
        var key = pthread_key_t()
        let status = pthread_key_create(&key) { block in
            if let block { Unmanaged<GemmScratch>.fromOpaque(block).release() }
        }
        precondition(status == 0, "pthread_key_create failed: \(status)")
        return key
    }()

    /// At least `count` floats, 64-byte aligned, valid until this thread asks for the same slot again.
    static func forThisThread(floats count: Int, slot: Int = 0) -> UnsafeMutablePointer<Float> {
        let scratch: GemmScratch
        if let block = pthread_getspecific(key) {
            scratch = Unmanaged<GemmScratch>.fromOpaque(block).takeUnretainedValue()
        } else {
            scratch = GemmScratch()
            pthread_setspecific(key, Unmanaged.passRetained(scratch).toOpaque())
        }
        while scratch.blocks.count <= slot { scratch.blocks.append((UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 64), 0)) }
        if scratch.blocks[slot].capacity < count {
            scratch.blocks[slot].floats.deallocate()
            scratch.blocks[slot] = (UnsafeMutableRawPointer.allocate(byteCount: count * 4, alignment: 64), count)
        }
        return scratch.blocks[slot].floats.assumingMemoryBound(to: Float.self)
    }
}
