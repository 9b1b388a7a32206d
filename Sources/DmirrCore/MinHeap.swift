/// A binary min-heap: `min` is the smallest element pushed and not yet popped. Elements that compare equal come out in
/// an order that depends only on the pushes and pops, never on anything else, so runs stay replayable.
public struct MinHeap<Element: Comparable> {
    private var items: [Element] = []

    public init() {}

    public var min: Element? { items.first }
    public var isEmpty: Bool { items.isEmpty }

    public mutating func push(_ element: Element) {
        items.append(element)
        var child = items.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard items[child] < items[parent] else { break }
            items.swapAt(child, parent)
            child = parent
        }
    }

    @discardableResult
    public mutating func popMin() -> Element? {
        guard !items.isEmpty else { return nil }
        items.swapAt(0, items.count - 1)
        let top = items.removeLast()
        var parent = 0
        while true {
            let left = 2 * parent + 1
            let right = left + 1
            var first = parent
            if left < items.count, items[left] < items[first] { first = left }
            if right < items.count, items[right] < items[first] { first = right }
            guard first != parent else { return top }
            items.swapAt(parent, first)
            parent = first
        }
    }
}

extension MinHeap: Sendable where Element: Sendable {}
