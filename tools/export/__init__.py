"""Results out as DICOM objects a viewer or PACS can take.

``dicom_seg`` writes masks as a DICOM Segmentation (highdicom). The Structured Report that
cites them needs the agent's answer, so it lives a layer up, in ``agent.dicom_sr``.
"""
