"""Mix IF and CD data; dev and test splits; seen-prompt pool; quarantine of rejected rows; data card."""

from kfp import dsl
from kfp.dsl import Dataset, Markdown, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def mix_data(
    data: dict, model: dict, tracking: dict,
    train_set: Output[Dataset], dev_set: Output[Dataset], test_set: Output[Dataset], seen_prompts: Output[Dataset],
    rejected_rows: Output[Dataset], data_card: Output[Markdown],
) -> dict:
    from reset import steps

    stats = steps.mix(steps.config(data=data, model=model, tracking=tracking), out_train=train_set.path,
                      out_dev=dev_set.path, out_test=test_set.path, out_seen=seen_prompts.path,
                      out_rejected=rejected_rows.path, out_card=data_card.path)
    for art, key in ((train_set, "train"), (dev_set, "dev"), (test_set, "test"), (seen_prompts, "seen_prompts"),
                     (rejected_rows, "rejected")):
        art.metadata["rows"] = stats[key]
    test_set.metadata["sha256"] = stats["test_digest"]
    return stats
