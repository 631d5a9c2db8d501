"""The volume viewer's export: the saved label maps as NIfTI, or as DICOM-SEG for a DICOM series.

Both keep the source geometry: the NIfTI has the volume's shape and affine (it
overlays in ITK-SNAP or 3D Slicer), the DICOM-SEG references the stored,
de-identified series slice by slice. Every label of the volume is in the file,
valued by the project's label order, at its latest saved revision.
"""

from pathlib import Path

from medsam_core.volume import write_label_nifti
from portal.store.errors import StoreError
from portal.store.services import volumes, volumes_labels, volumes_read
from portal.web.ui.context import PortalContext
from portal.web.zip_reading import name_stem

FORMATS = ("nifti", "dicom-seg")


def export_file(ctx: PortalContext, user, volume_id: int, fmt: str, folder: Path) -> Path:
    """Writes the file into ``folder``; refused with a message when nothing is saved or the format does not fit."""
    if fmt not in FORMATS:
        raise StoreError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")

    def build(db) -> Path:
        row = volumes.get_volume(db, user, volume_id)
        labels, names = volumes_labels.combined_labels(db, ctx.blobs, user, volume_id)
        if not names:
            raise StoreError(f"volume {volume_id} has no saved label map yet: save a draft first")
        stem = name_stem(row.filename) or "volume"
        if fmt == "nifti":
            volume = volumes_read.load_volume(db, ctx.blobs, ctx.settings, row)
            return write_label_nifti(labels, volume, folder / f"{stem}_labels.nii.gz")
        datasets = volumes_read.source_datasets(db, ctx.blobs, ctx.settings, row)
        from medsam_core.dicom_seg import write_dicom_seg

        return write_dicom_seg(labels, names, datasets, folder / f"{stem}_seg.dcm")

    return ctx.run(build)
