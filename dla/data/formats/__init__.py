"""Readers of the file formats the public-domain corpus of ``dla.data.books`` comes in: SWORD Bible and
commentary modules (OSIS markup), dictd databases, WordNet data files and R lazy-load databases. Pure Python."""

from dla.data.formats.dictd import DictEntry, read_dictd
from dla.data.formats.rdata import read_lazyload, read_rds, unserialize
from dla.data.formats.sword import SwordEntry, SwordModule, find_module, osis_to_text, read_entries
from dla.data.formats.wordnet import Synset, read_glosses

__all__ = ["DictEntry", "read_dictd", "read_lazyload", "read_rds", "unserialize", "SwordEntry", "SwordModule",
           "find_module", "osis_to_text", "read_entries", "Synset", "read_glosses"]
