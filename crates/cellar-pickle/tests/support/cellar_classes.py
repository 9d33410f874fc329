"""Classes for the class-instance test (tests/classes.rs): plain, slotted, __reduce__,
__getnewargs_ex__, list and dict subclasses, nested and recursive."""


class Base:
    def __eq__(self, other):
        return type(self) is type(other) and self._key() == other._key()

    def _key(self):
        return self.__dict__

    def __repr__(self):
        return "%s(%r)" % (type(self).__name__, self._key())


class Plain(Base):
    def __init__(self, a, b):
        self.a = a
        self.b = b


class Slotted(Base):
    __slots__ = ("x", "y")

    def __init__(self, x, y):
        self.x = x
        self.y = y

    def _key(self):
        return (self.x, self.y)


class WithReduce(Base):
    def __init__(self, v):
        self.v = v

    def __reduce__(self):
        return (WithReduce, (self.v,))


class NewArgsEx(Base):
    def __new__(cls, a, *, b):
        self = super().__new__(cls)
        self.a = a
        self.b = b
        return self

    def __getnewargs_ex__(self):
        return ((self.a,), {"b": self.b})


class MyList(list):
    def __eq__(self, other):
        return type(self) is type(other) and list(self) == list(other) and self.__dict__ == other.__dict__


class MyDict(dict):
    def __eq__(self, other):
        return type(self) is type(other) and dict(self) == dict(other) and self.__dict__ == other.__dict__


def make_cases():
    ml = MyList([1, "two", (3,)])
    ml.tag = "L"
    md = MyDict({"k": [1, 2], 3: None})
    md.tag = "D"
    nested = Plain([Slotted(1, 2), ml], {"inner": WithReduce(b"\x00\xff")})
    shared = Plain(1, 2)
    return {
        "plain": Plain(1, "x"),
        "slotted": Slotted(1.5, None),
        "reduce": WithReduce((1, 2)),
        "newargs_ex": NewArgsEx(7, b="bee"),
        "mylist": ml,
        "mydict": md,
        "nested": nested,
        "shared": [shared, shared],
    }


def make_recursive():
    p = Plain(None, None)
    p.a = p
    return p
