"""Models: from features to a registered version, and everything its card carries.

`inputs` is what a card records of each feature (light, for reading cards); `features` binds columns by name
and encodes them (one encoding for training and scoring); `training` fits LightGBM deterministically;
`registry` keeps immutable versions and the alias log, and `promotion` is the rule it applies before an alias
moves (a failed gate report refuses it unless forced with a reason). `profiles` (the training rows as the card
records them) and `lineage` (who, where, which code; runs carry it too) live here because the card is where
they are written and they need nothing above this floor; `timestamps` reads a time column (dates as stored,
ISO text, or text in the model's `timestamp_format`) for the time split and for spotting date-like text among
the features. May import: `store`, `batchml.config` and the vocabulary. Never `data`: training takes a table,
and the api reads it from a dataset version.
"""
