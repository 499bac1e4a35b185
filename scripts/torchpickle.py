"""Read a PyTorch `torch.save` state dict without torch, and write safetensors by hand.

Only numpy is needed. Both on-disk formats of `torch.save` are understood:

* legacy (torch < 1.6, or `_use_new_zipfile_serialization=False`): a sequence of pickles
  (magic number, protocol version, sys_info, the object, the sorted list of storage keys),
  followed by each storage's raw bytes, each prefixed with an 8-byte little-endian element count;
* zip (torch >= 1.6): `<archive>/data.pkl` (the object) and `<archive>/data/<key>` (raw bytes).

In both, tensors are pickled as `torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
...)` and storages as persistent ids `('storage', <storage class>, key, location, numel[, view])`.
"""

import collections
import io
import json
import pickle
import struct
import zipfile

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

# torch storage class name -> numpy dtype (little-endian).
STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}

# numpy dtype -> safetensors dtype name.
SAFETENSORS_DTYPES = {
    np.dtype("<f4"): "F32",
    np.dtype("<f8"): "F64",
    np.dtype("<f2"): "F16",
    np.dtype("<i8"): "I64",
    np.dtype("<i4"): "I32",
    np.dtype("<i2"): "I16",
    np.dtype("i1"): "I8",
    np.dtype("u1"): "U8",
    np.dtype("?"): "BOOL",
}


class TorchFormatError(Exception):
    pass


class StorageType:
    """Stands in for `torch.FloatStorage` and friends: only its dtype matters."""

    def __init__(self, name):
        if name not in STORAGE_DTYPES:
            raise TorchFormatError(f"unsupported storage type torch.{name}")
        self.name = name
        self.dtype = STORAGE_DTYPES[name]


class Storage:
    """A storage whose bytes are filled in later (legacy format) or read on demand (zip)."""

    def __init__(self, dtype, numel):
        self.dtype = dtype
        self.numel = numel
        self.array = None  # 1-D numpy array once the bytes are known


class LazyTensor:
    """The arguments of `_rebuild_tensor_v2`, materialised once every storage is read."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def to_numpy(self):
        data = self.storage.array
        if data is None:
            raise TorchFormatError("a tensor refers to a storage whose bytes were never read")
        if not self.size:
            return data[self.offset:self.offset + 1].reshape(()).copy()
        itemsize = data.dtype.itemsize
        end = self.offset + 1 + sum((n - 1) * s for n, s in zip(self.size, self.stride) if n > 0)
        if end > data.size:
            raise TorchFormatError(f"tensor of size {self.size} runs past its storage ({data.size} elements)")
        view = np.lib.stride_tricks.as_strided(
            data[self.offset:], shape=self.size, strides=[s * itemsize for s in self.stride])
        return np.ascontiguousarray(view)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    return LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


class _Unpickler(pickle.Unpickler):
    """Resolves torch globals to the stand-ins above and storages to `Storage` objects."""

    def __init__(self, file, storages, load_bytes=None):
        super().__init__(file)
        self.storages = storages  # key -> Storage, shared across the legacy pickles
        self.load_bytes = load_bytes  # zip: key -> bytes

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name.endswith("Storage"):
            return StorageType(name)
        if module == "builtins" and name in ("dict", "list", "tuple", "set", "int", "float", "str"):
            return getattr(__import__("builtins"), name)
        raise TorchFormatError(f"refusing to load global {module}.{name} (not part of a plain state dict)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise TorchFormatError(f"unexpected persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1], str(pid[2]), pid[3], pid[4]
        if len(pid) > 5 and pid[5] is not None:
            raise TorchFormatError("storage views (very old torch files) are not supported")
        if not isinstance(storage_type, StorageType):
            raise TorchFormatError(f"unexpected storage type {storage_type!r}")
        storage = self.storages.get(key)
        if storage is None:
            storage = Storage(storage_type.dtype, numel)
            self.storages[key] = storage
            if self.load_bytes is not None:
                raw = self.load_bytes(key)
                storage.array = np.frombuffer(raw, dtype=storage.dtype, count=numel)
        return storage


def _materialise(obj):
    if isinstance(obj, LazyTensor):
        return obj.to_numpy()
    if isinstance(obj, dict):
        return collections.OrderedDict((k, _materialise(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(v) for v in obj)
    return obj


def _load_zip(path):
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise TorchFormatError(f"{path}: expected one data.pkl in the zip, found {len(pkl)}")
        prefix = pkl[0][: -len("data.pkl")]
        storages = {}

        def load_bytes(key):
            return zf.read(f"{prefix}data/{key}")

        obj = _Unpickler(io.BytesIO(zf.read(pkl[0])), storages, load_bytes).load()
        return _materialise(obj)


def _load_legacy(path):
    with open(path, "rb") as f:
        storages = {}
        magic = _Unpickler(f, storages).load()
        if magic != LEGACY_MAGIC:
            raise TorchFormatError(f"{path}: not a torch.save file (bad magic number)")
        protocol = _Unpickler(f, storages).load()
        if protocol != 1001:
            raise TorchFormatError(f"{path}: unsupported legacy protocol version {protocol}")
        _sys_info = _Unpickler(f, storages).load()
        obj = _Unpickler(f, storages).load()
        keys = _Unpickler(f, storages).load()
        for key in keys:
            storage = storages.get(str(key))
            if storage is None:
                raise TorchFormatError(f"{path}: storage {key} is listed but never used")
            header = f.read(8)
            if len(header) != 8:
                raise TorchFormatError(f"{path}: truncated before storage {key}")
            (numel,) = struct.unpack("<q", header)
            nbytes = numel * storage.dtype.itemsize
            raw = f.read(nbytes)
            if len(raw) != nbytes:
                raise TorchFormatError(f"{path}: storage {key} truncated ({len(raw)} of {nbytes} bytes)")
            storage.array = np.frombuffer(raw, dtype=storage.dtype, count=numel)
        return _materialise(obj)


def load_state_dict(path):
    """The state dict in a `torch.save` file as an ordered dict of name -> numpy array.

    A checkpoint that wraps the state dict (`{"state_dict": ...}` or `{"model": ...}`) is unwrapped.
    """
    obj = _load_zip(path) if zipfile.is_zipfile(path) else _load_legacy(path)
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise TorchFormatError(f"{path}: the saved object is a {type(obj).__name__}, not a state dict")
    out = collections.OrderedDict()
    for name, value in obj.items():
        if isinstance(value, np.ndarray):
            out[name] = value
    return out


def save_safetensors(tensors, path, metadata=None):
    """Write `tensors` (name -> numpy array) as a safetensors file: an 8-byte little-endian header
    length, the JSON header (dtype, shape, data_offsets of each tensor), then the raw bytes."""
    header, chunks, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name, array in tensors.items():
        array = np.asarray(array)  # (np.ascontiguousarray would turn a 0-d scalar into shape (1,))
        dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
        array = array.astype(dtype, copy=False)
        if dtype not in SAFETENSORS_DTYPES:
            raise TorchFormatError(f"{name}: dtype {array.dtype} has no safetensors name")
        raw = array.tobytes(order="C")
        header[name] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # align the data to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for raw in chunks:
            f.write(raw)
