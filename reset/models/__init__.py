"""Models: resolve / load / save (loading), chat formatting (chat), fine-tuning (finetune) and
generation backends (generation/)."""
