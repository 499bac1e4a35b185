"""Test helper: write a state dict the way `torch.save` does, without torch, in both formats.

Usage: torch_writer.py IN.safetensors LEGACY.pth ZIP.pth

Reads IN (name -> array), adds a `num_batches_tracked` int64 scalar next to every
`running_mean` (as torchvision checkpoints have), and writes the result as a legacy `torch.save`
file and as a zip one. To exercise the reader's handling of storage sharing and strides:
  * every `*.bias` shares one storage with its `*.weight` (the bias at an offset after the weight),
  * every 2-D tensor is stored transposed (a column-major view: stride (1, rows)).
"""
import collections
import io
import pickle
import sys
import types
import zipfile

import numpy as np
from safetensors.numpy import load_file

# Fake `torch` modules so that pickle writes the same GLOBAL opcodes torch does.
torch = types.ModuleType("torch")
torch_utils = types.ModuleType("torch._utils")
sys.modules["torch"], sys.modules["torch._utils"] = torch, torch_utils
torch._utils = torch_utils


def _make_storage_class(name, dtype):
    cls = type(name, (), {"dtype": np.dtype(dtype)})
    cls.__module__ = "torch"
    setattr(torch, name, cls)
    return cls


STORAGE_CLASSES = {
    np.dtype("<f4"): _make_storage_class("FloatStorage", "<f4"),
    np.dtype("<i8"): _make_storage_class("LongStorage", "<i8"),
}


def _rebuild_tensor_v2(*args):
    raise AssertionError("never called: only pickled by reference")


_rebuild_tensor_v2.__module__ = "torch._utils"
torch_utils._rebuild_tensor_v2 = _rebuild_tensor_v2


class StorageRef:
    def __init__(self, key, data):
        self.key, self.data = key, data  # data: 1-D numpy array


class TensorRef:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __reduce__(self):
        return (_rebuild_tensor_v2, (self.storage, self.offset, tuple(self.size), tuple(self.stride), False,
                                     collections.OrderedDict()))


def build(state):
    """name -> TensorRef over a list of StorageRefs, with sharing and transposes."""
    storages, out = [], collections.OrderedDict()
    names = list(state)
    done = set()
    # Weights first, so that each can take its bias into its storage.
    for name in sorted(names, key=lambda n: not n.endswith(".weight")):
        if name in done:
            continue
        a = state[name]
        bias = name[: -len("weight")] + "bias" if name.endswith(".weight") else None
        if a.ndim == 2:
            data = np.ascontiguousarray(a.T).reshape(-1)
            size, stride = a.shape, (1, a.shape[0])
        else:
            data = a.reshape(-1)
            size = a.shape
            stride = tuple(int(np.prod(a.shape[i + 1:])) for i in range(a.ndim))
        if bias in state and state[bias].dtype == a.dtype:
            b = state[bias]
            storage = StorageRef(str(len(storages)), np.concatenate([data, b.reshape(-1)]))
            out[bias] = TensorRef(storage, data.size, b.shape, (1,) * b.ndim if b.ndim else ())
            done.add(bias)
        else:
            storage = StorageRef(str(len(storages)), data)
        storages.append(storage)
        out[name] = TensorRef(storage, 0, size, stride)
        done.add(name)
    # Keep the file's key order (the bias may have been created before its weight's entry).
    return collections.OrderedDict((n, out[n]) for n in names), storages


class Pickler(pickle.Pickler):
    def __init__(self, f, legacy):
        super().__init__(f, protocol=2)
        self.legacy = legacy

    def persistent_id(self, obj):
        if isinstance(obj, StorageRef):
            cls = STORAGE_CLASSES[obj.data.dtype]
            if self.legacy:
                return ("storage", cls, obj.key, "cpu", obj.data.size, None)
            return ("storage", cls, obj.key, "cpu", obj.data.size)
        return None


def write_legacy(path, state):
    tensors, storages = build(state)
    with open(path, "wb") as f:
        pickle.dump(0x1950A86A20F9469CFC6C, f, protocol=2)
        pickle.dump(1001, f, protocol=2)
        pickle.dump({"protocol_version": 1001, "little_endian": True,
                     "type_sizes": {"short": 2, "int": 4, "long": 4}}, f, protocol=2)
        Pickler(f, legacy=True).dump(tensors)
        keys = sorted(s.key for s in storages)
        pickle.dump(keys, f, protocol=2)
        by_key = {s.key: s for s in storages}
        for key in keys:
            data = by_key[key].data
            f.write(np.int64(data.size).tobytes())
            f.write(data.tobytes())


def write_zip(path, state):
    tensors, storages = build(state)
    buf = io.BytesIO()
    Pickler(buf, legacy=False).dump(tensors)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("model/data.pkl", buf.getvalue())
        zf.writestr("model/version", "3\n")
        for s in storages:
            zf.writestr(f"model/data/{s.key}", s.data.tobytes())


def main():
    src, legacy, zipped = sys.argv[1:4]
    state = collections.OrderedDict()
    for name, a in load_file(src).items():
        state[name] = a
        if name.endswith("running_mean"):
            state[name[: -len("running_mean")] + "num_batches_tracked"] = np.array(7, dtype="<i8")
    write_legacy(legacy, state)
    write_zip(zipped, state)


if __name__ == "__main__":
    main()
