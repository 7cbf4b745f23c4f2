import Tensor

/// A neural-network building block. Subclasses store their parameters (`Tensor`) and
/// sub-modules as properties; reflection finds them, so a parameter's dotted name is the path of
/// property names to it (`down_blocks.0.attentions.0.proj_in.weight`).
///
/// Property names follow the checkpoint. Where Swift naming differs from the checkpoint key,
/// wrap the property in `@Key("to_out")` (and assign it after `super.init()`). Arrays of
/// modules contribute `name.index`.
open class Module {
    /// Whether the module is in training mode (dropout active, etc.).
    public private(set) var isTraining = true

    public init() {}

    /// Direct children of this module: (key, value) where value is a Tensor, Module or [Module].
    open func namedChildren() -> [(String, Any)] {
        var children: [(String, Any)] = []
        var mirror: Mirror? = Mirror(reflecting: self)
        var levels: [[(String, Any)]] = []
        while let m = mirror {
            var level: [(String, Any)] = []
            for child in m.children {
                guard let label = child.label else { continue }
                if let keyed = child.value as? KeyedProperty {
                    if let value = keyed.keyedValue { level.append((keyed.key, value)) }
                } else {
                    level.append((label, child.value))
                }
            }
            levels.append(level)
            mirror = m.superclassMirror
        }
        // Base-class properties first, as they were declared first.
        for level in levels.reversed() { children += level }
        return children
    }

    /// Every parameter below this module with its dotted checkpoint key, in declaration order.
    public func namedParameters() -> [(name: String, tensor: Tensor)] {
        var result: [(name: String, tensor: Tensor)] = []
        func visit(_ value: Any, _ prefix: String) {
            switch unwrapOptional(value) {
            case let tensor as Tensor: result.append((prefix, tensor))
            case let module as Module:
                for (key, child) in module.namedChildren() { visit(child, prefix.isEmpty ? key : "\(prefix).\(key)") }
            case let modules as [Module]:
                for (i, module) in modules.enumerated() { visit(module, "\(prefix).\(i)") }
            case let tensors as [Tensor]:
                for (i, tensor) in tensors.enumerated() { result.append(("\(prefix).\(i)", tensor)) }
            default: break
            }
        }
        for (key, child) in namedChildren() { visit(child, key) }
        return result
    }

    public func parameters() -> [Tensor] { namedParameters().map(\.tensor) }

    /// Parameters that currently receive gradients.
    public func trainableParameters() -> [(name: String, tensor: Tensor)] {
        namedParameters().filter { $0.tensor.requiresGrad }
    }

    public var parameterCount: Int { parameters().reduce(0) { $0 + $1.count } }

    /// Stops gradients for the parameters whose name satisfies `predicate` (all by default).
    public func freeze(where predicate: (String) -> Bool = { _ in true }) {
        for (name, p) in namedParameters() where predicate(name) { p.requiresGrad = false }
    }

    /// Lets gradients flow to the parameters whose name satisfies `predicate` (all by default).
    public func unfreeze(where predicate: (String) -> Bool = { _ in true }) {
        for (name, p) in namedParameters() where predicate(name) { p.requiresGrad = true }
    }

    public func zeroGrad() { for p in parameters() { p.grad = nil } }

    /// Sets training mode on this module and every sub-module.
    public func train(_ on: Bool = true) {
        func visit(_ value: Any) {
            switch unwrapOptional(value) {
            case let module as Module:
                module.isTraining = on
                for (_, child) in module.namedChildren() { visit(child) }
            case let modules as [Module]: modules.forEach(visit)
            default: break
            }
        }
        visit(self)
    }

    public func eval() { train(false) }
}

/// Looks through `Optional` so optional sub-modules and parameters are found when present.
private func unwrapOptional(_ value: Any) -> Any? {
    let mirror = Mirror(reflecting: value)
    guard mirror.displayStyle == .optional else { return value }
    return mirror.children.first?.value
}

/// A property whose checkpoint key differs from its Swift name.
protocol KeyedProperty {
    var key: String { get }
    var keyedValue: Any? { get }
}

/// Gives a module property its checkpoint key: `@Key("to_out") var toOut: [Module]`.
/// Assign the value in the initialiser as usual.
@propertyWrapper
public struct Key<Value>: KeyedProperty {
    private var value: Value?
    public let key: String

    public init(wrappedValue: Value, _ key: String) {
        self.value = wrappedValue
        self.key = key
    }

    public init(_ key: String) { self.key = key }

    public var wrappedValue: Value {
        get {
            guard let value else { preconditionFailure("module property '\(key)' read before it was set") }
            return value
        }
        set { value = newValue }
    }

    var keyedValue: Any? { value.flatMap(unwrapOptional) }
}
