"""Downloads a URL list with img2dataset's own `download` (tests/img2dataset.rs runs it from
the virtualenv that `make img2dataset-venv` makes): usage `download.py LIST OUT FORMAT` where
FORMAT is img2dataset's --output_format (parquet or webdataset)."""
import sys

from img2dataset import download

if __name__ == "__main__":
    url_list, output_folder, output_format = sys.argv[1:4]
    download(
        url_list=url_list,
        input_format="tsv",
        url_col="url",
        caption_col="caption",
        output_format=output_format,
        output_folder=output_folder,
        image_size=64,
        processes_count=1,
        thread_count=8,
        number_sample_per_shard=50,
        timeout=5,
        retries=0,
        enable_wandb=False,
        distributor="multiprocessing",
    )
