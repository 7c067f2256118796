"""User labels: the `LabelMap` between the labels on disk ("ID_5", or a metadata user_id 5)
and the contiguous class indices 0..N-1 the models see, saved as `label_map.json` and inside
every bundle. Across dalle2-md, `user_labels` are the former (what people type, e.g.
`--user_ids ID_5`) and `user_indices` the latter (what networks and tensors hold). Also what a user label looks like (`USER_DIR_RE`) and the data layouts a label
map can come from (`DATA_LAYOUTS`)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from dalle2_md.utils import DataError, atomic_write, checked_fields, read_json_file, short_list

# how a data root is laid out on disk (see scanning.py); a label map remembers which one it
# came from, because generated files are named differently in each
DATA_LAYOUTS = ("hierarchical", "flat")
# a user folder is any name ending in an integer: user_0, user_01, ID_1, subject7
USER_DIR_RE = re.compile(r"^(?P<prefix>.*?)(?P<num>\d+)$")


@dataclass(frozen=True, kw_only=True)
class LabelMap:
    """Original user labels <-> contiguous class indices 0..N-1.

    `names[i]` is the label shown to people (the folder name "ID_5", or the metadata user_id as
    a string "5"); `ids[i]` is the integer inside it, which is what users usually type.
    Indices follow the integers in increasing order, so ID_1..ID_31 <-> 0..30 and a gap
    (ID_1, ID_7) still gives 0, 1.
    """

    names: tuple[str, ...]
    ids: tuple[int, ...]
    layout: str = "hierarchical"

    def __post_init__(self):
        names, ids = tuple(str(n) for n in self.names), tuple(int(i) for i in self.ids)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "ids", ids)
        if len(names) != len(ids):
            raise DataError(f"label map has {len(names)} names but {len(ids)} ids; it is damaged")
        if len(set(names)) != len(names):
            raise DataError(f"label map repeats a user name: {short_list(names)}")
        if len(set(ids)) != len(ids):
            raise DataError(f"label map repeats a user number: {short_list(ids)}")
        if self.layout not in DATA_LAYOUTS:
            raise DataError(f"label map layout {self.layout!r} is not one of {DATA_LAYOUTS}")

    @classmethod
    def from_folder_names(cls, names: Sequence[str]) -> "LabelMap":
        """Hierarchical layout: folder names ending in an integer, ordered by that integer."""
        parsed = []
        for name in names:
            m = USER_DIR_RE.match(name)
            if m is None:
                raise DataError(f"user folder name {name!r} does not end in a number (e.g. user_0, ID_1)")
            parsed.append((int(m["num"]), name))
        parsed.sort()
        nums = [n for n, _ in parsed]
        dup = sorted({n for n in nums if nums.count(n) > 1})
        if dup:
            clash = [name for n, name in parsed if n in dup]
            raise DataError(
                f"user folders {short_list(clash)} carry the same user number; "
                "rename or merge them so each user number appears once"
            )
        return cls(names=tuple(n for _, n in parsed), ids=tuple(nums), layout="hierarchical")

    @classmethod
    def from_ids(cls, ids: Sequence[int]) -> "LabelMap":
        """Flat layout: the integer `user_id`s of metadata.json (user numbers, not indices),
        named by their decimal string."""
        uniq = sorted(set(int(i) for i in ids))
        return cls(names=tuple(str(i) for i in uniq), ids=tuple(uniq), layout="flat")

    def __len__(self) -> int:
        return len(self.names)

    def name_of(self, index: int) -> str:
        """The original label of class `index`."""
        index = int(index)
        if not 0 <= index < len(self):
            raise DataError(f"user index {index} is out of range: this label map has {len(self)} users (0..{len(self) - 1})")
        return self.names[index]

    def file_stem(self, index: int) -> str:
        """File-name stem for generated images of class `index`: the folder name in the
        hierarchical layout ("ID_5"), `user_<id>` in the flat one ("user_5")."""
        name = self.name_of(index)
        return name if self.layout == "hierarchical" else f"user_{self.ids[int(index)]}"

    def index_of(self, label: str | int) -> int:
        """Class index of a user given as a name ("ID_5"), its number as text ("5") or int (5).

        Numbers are the user's own number (ID_5 -> 5), not the class index. A name with a
        different prefix but a known number ("user_5" for folder ID_5) is matched on the number.
        """
        if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
            if int(label) in self.ids:
                return self.ids.index(int(label))
        elif isinstance(label, str):
            text = label.strip()
            if text in self.names:
                return self.names.index(text)
            lowered = [n.lower() for n in self.names]
            if lowered.count(text.lower()) == 1:
                return lowered.index(text.lower())
            m = USER_DIR_RE.match(text)
            if m is not None and int(m["num"]) in self.ids:
                prefix = m["prefix"].lower()
                known = {USER_DIR_RE.match(n)["prefix"].lower() for n in self.names} | {"", "user", "user_", "id_", "id"}
                if prefix in known:
                    return self.ids.index(int(m["num"]))
        raise DataError(
            f"unknown user {label!r}: valid users are {short_list(self.names, 40)} "
            "(give the name or its number)"
        )

    def to_dict(self) -> dict:
        """Plain JSON types, for bundles and label_map.json."""
        return {"names": list(self.names), "ids": list(self.ids), "layout": self.layout}

    @classmethod
    def from_dict(cls, d: dict) -> "LabelMap":
        """Rebuild from `to_dict()` output (e.g. the label_map stored in a bundle)."""
        d = checked_fields(cls, d, what="label map", error=DataError)
        if not {"names", "ids"} <= set(d):
            raise DataError("label map is malformed: expected a dict with 'names' and 'ids'")
        names, ids = d["names"], d["ids"]
        if not isinstance(names, list) or not isinstance(ids, list):
            raise DataError("label map is malformed: 'names' and 'ids' must be lists")
        if any(isinstance(i, bool) or not isinstance(i, int) for i in ids):
            raise DataError("label map is malformed: 'ids' must be integers")
        return cls(names=tuple(names), ids=tuple(ids), layout=d.get("layout", "hierarchical"))

    def save(self, path: str | Path) -> Path:
        """Write as JSON (atomically) to `path`."""
        path = Path(path)
        with atomic_write(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "LabelMap":
        """Read a label map written by `save`."""
        path = Path(path)
        d = read_json_file(path, what="label map file", fix="re-create it")
        try:
            return cls.from_dict(d)
        except DataError as e:
            raise DataError(f"{path}: {e}") from None

    def __repr__(self) -> str:
        return f"LabelMap({len(self)} users, {self.layout}: {short_list(self.names, 6)})"
