// Pure schedules: which segment, which partner, at which step. No sockets here, so they are tested alone.

/// Segment `index` of `count` elements cut into `parts` nearly equal contiguous pieces (the first
/// count % parts pieces get one more). Works for count < parts (some segments are empty).
public func segmentRange(count: Int, parts: Int, index: Int) -> Range<Int> {
    let base = count / parts, extra = count % parts
    let start = index * base + Swift.min(index, extra)
    return start..<(start + base + (index < extra ? 1 : 0))
}

@inline(__always) func modulo(_ a: Int, _ n: Int) -> Int { ((a % n) + n) % n }

/// Ring reduce-scatter, step s: rank r sends segment r-s-1 to r+1 and receives segment r-s-2 from r-1,
/// so after N-1 steps rank r holds the full reduction of segment r. Allgather, step s: send segment r-s,
/// receive segment r-s-1.
public enum RingSchedule {
    public static func reduceScatter(rank: Int, worldSize n: Int, step s: Int) -> (send: Int, receive: Int) {
        (modulo(rank - s - 1, n), modulo(rank - s - 2, n))
    }
    public static func allgather(rank: Int, worldSize n: Int, step s: Int) -> (send: Int, receive: Int) {
        (modulo(rank - s, n), modulo(rank - s - 1, n))
    }
}

/// Binary tree over ranks rooted at 0: parent (r-1)/2, children 2r+1 and 2r+2.
public enum TreeSchedule {
    public static func parent(of rank: Int) -> Int? { rank == 0 ? nil : (rank - 1) / 2 }
    public static func children(of rank: Int, worldSize n: Int) -> [Int] { [2 * rank + 1, 2 * rank + 2].filter { $0 < n } }
    /// Edges from the root: floor(log2(rank + 1)); the deepest rank of a world is its last.
    public static func depth(of rank: Int) -> Int { Int.bitWidth - 1 - (rank + 1).leadingZeroBitCount }
}

/// Recursive halving-doubling over the largest power of two p <= N. Ranks p..<N are "extra": each first
/// folds its vector into rank r-p and gets the result back at the end. Among the first p ranks, step k
/// pairs rank r with r XOR (p >> (k+1)); both halve the range they are responsible for, the lower rank
/// keeping the lower half. The allgather replays the steps backwards.
public enum HalvingDoublingSchedule {
    public static func powerOfTwo(below n: Int) -> Int {
        var p = 1
        while p * 2 <= n { p *= 2 }
        return p
    }

    /// Per step: partner, the range kept and the range given away, as element ranges of the whole vector.
    public static func steps(rank: Int, worldSize n: Int, count: Int) -> [(partner: Int, keep: Range<Int>, give: Range<Int>)] {
        let p = powerOfTwo(below: n)
        guard rank < p else { return [] }
        var low = 0, high = p // block indices [low, high) of p equal blocks
        var out: [(Int, Range<Int>, Range<Int>)] = []
        var distance = p / 2
        while distance >= 1 {
            let partner = rank ^ distance
            let middle = (low + high) / 2
            let lowerHalf = blockRange(count: count, blocks: p, low, middle)
            let upperHalf = blockRange(count: count, blocks: p, middle, high)
            if rank & distance == 0 {
                out.append((partner, lowerHalf, upperHalf)); high = middle
            } else {
                out.append((partner, upperHalf, lowerHalf)); low = middle
            }
            distance /= 2
        }
        return out
    }

    static func blockRange(count: Int, blocks: Int, _ from: Int, _ to: Int) -> Range<Int> {
        segmentRange(count: count, parts: blocks, index: from).lowerBound..<(to == from ? segmentRange(count: count, parts: blocks, index: from).lowerBound
                                                                             : segmentRange(count: count, parts: blocks, index: to - 1).upperBound)
    }
}
